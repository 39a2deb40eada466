//! The few OData `$filter` forms the simulator understands.

/// Graph refuses more id clauses than this in one delta filter.
pub const MAX_ID_CLAUSES: usize = 50;

/// Parses `{field} eq 'literal'`, where `''` inside the literal is one quote.
pub fn parse_eq_clause(clause: &str, field: &str) -> Option<String> {
    let literal = clause
        .trim()
        .strip_prefix(field)?
        .trim_start()
        .strip_prefix("eq")?
        .trim_start()
        .strip_prefix('\'')?
        .strip_suffix('\'')?;
    unescape_literal(literal)
}

fn unescape_literal(literal: &str) -> Option<String> {
    let mut text = String::with_capacity(literal.len());
    let mut chars = literal.chars();
    while let Some(c) = chars.next() {
        if c == '\'' && chars.next() != Some('\'') {
            return None; // a lone quote ends the literal early: malformed
        }
        text.push(c);
    }
    Some(text)
}

/// Parses `id eq 'a' or id eq 'b' ...` into sorted, distinct ids.
pub fn parse_id_filter(filter: &str) -> Option<Vec<String>> {
    let mut ids = filter
        .split(" or ")
        .map(|clause| parse_eq_clause(clause, "id"))
        .collect::<Option<Vec<String>>>()?;
    if ids.len() > MAX_ID_CLAUSES {
        return None;
    }
    ids.sort();
    ids.dedup();
    Some(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_name_literal_unescapes_doubled_quotes() {
        let parsed = parse_eq_clause("displayName eq 'O''Brien''s team'", "displayName");
        assert_eq!(parsed.as_deref(), Some("O'Brien's team"));
        assert_eq!(parse_eq_clause("displayName eq 'O'Brien'", "displayName"), None);
        assert_eq!(
            parse_eq_clause("startswith(displayName,'a')", "displayName"),
            None
        );
    }

    #[test]
    fn id_filters_accept_up_to_fifty_clauses() {
        assert_eq!(
            parse_id_filter("id eq 'b' or id eq 'a' or id eq 'b'"),
            Some(vec!["a".to_owned(), "b".to_owned()])
        );
        let clauses: Vec<String> = (0..51).map(|i| format!("id eq '{i}'")).collect();
        assert_eq!(parse_id_filter(&clauses.join(" or ")), None);
        assert_eq!(parse_id_filter("accountEnabled eq true"), None);
    }
}
