use serde_json::{json, Value};
use usersync_mail::{Language, MailError, MailKind, Templates};

fn welcome_ctx() -> Value {
    json!({
        "first_name": "Åsa",
        "surname": "Öberg",
        "alias": "asa.oberg",
        "pstn_fixed": "46812345678",
        "company_name": "Acme AB",
        "email": "asa@acme.example",
    })
}

fn report_ctx(problems: Value, error: Value) -> Value {
    json!({
        "tenant_id": "acme",
        "company_name": "Acme AB",
        "outcome": "partial",
        "level": "warning",
        "counts": {"created": 3, "updated": 5, "deleted": 1, "skipped": 2, "failed": 1},
        "problems": problems,
        "error": error,
    })
}

fn config_message(err: MailError) -> String {
    match err {
        MailError::Config(message) => message,
        other => panic!("expected a config error, got {other:?}"),
    }
}

#[test]
fn welcome_renders_in_swedish() {
    let mail = Templates::load(None)
        .unwrap()
        .render(MailKind::Welcome, Language::Sv, &welcome_ctx())
        .unwrap();
    assert_eq!(mail.subject, "Välkommen till Infinity, Åsa");
    assert!(mail.text.starts_with("Hej Åsa!"), "{}", mail.text);
    assert!(mail.text.contains("asa.oberg"));
    assert!(mail.text.contains("+46812345678"));
    assert!(mail.text.contains("Acme AB"));
    assert!(mail.html.contains("<p>Hej Åsa!</p>"));
    assert!(mail.html.contains("lang=\"sv\""));
}

#[test]
fn welcome_renders_in_english() {
    let mail = Templates::load(None)
        .unwrap()
        .render(MailKind::Welcome, Language::En, &welcome_ctx())
        .unwrap();
    assert_eq!(mail.subject, "Welcome to Infinity, Åsa");
    assert!(mail.text.starts_with("Hi Åsa,"));
    assert!(mail.text.contains("Username:      asa.oberg"));
    assert!(mail.html.contains("+46812345678"));
}

#[test]
fn welcome_copy_names_the_new_user_for_the_admin() {
    let templates = Templates::load(None).unwrap();
    let sv = templates
        .render(MailKind::WelcomeCopy, Language::Sv, &welcome_ctx())
        .unwrap();
    assert_eq!(sv.subject, "Ny användare i Infinity: Åsa Öberg (asa.oberg)");
    assert!(sv.text.contains("asa@acme.example"));
    assert!(sv.text.contains("+46812345678"));

    let mut no_email = welcome_ctx();
    no_email["email"] = Value::Null;
    let en = templates
        .render(MailKind::WelcomeCopy, Language::En, &no_email)
        .unwrap();
    assert_eq!(en.subject, "New user in Infinity: Åsa Öberg (asa.oberg)");
    assert!(en.text.contains("Email:         (none)"), "{}", en.text);
    assert!(!en.html.contains("none\n"));
}

#[test]
fn run_report_groups_problems_by_field() {
    let problems = json!([
        {"user": "bo", "field": "pstn_fixed", "message": "not a Swedish number"},
        {"user": "cia", "field": "alias", "message": "alias taken"},
        {"user": "dan", "field": "pstn_fixed", "message": "missing"},
        {"user": "eva", "field": null, "message": "PBX refused"},
    ]);
    let templates = Templates::load(None).unwrap();
    let sv = templates
        .render(
            MailKind::RunReport,
            Language::Sv,
            &report_ctx(problems.clone(), Value::Null),
        )
        .unwrap();
    assert_eq!(sv.subject, "Synkrapport för Acme AB: delvis lyckad");
    assert!(sv.text.contains("Användare som behöver åtgärdas (4)"));
    let pstn_group = sv.text.find("Fält pstn_fixed:").expect("pstn_fixed group");
    let bo = sv.text.find("  - bo: not a Swedish number").unwrap();
    let dan = sv.text.find("  - dan: missing").unwrap();
    assert!(pstn_group < bo && pstn_group < dan);
    assert!(sv.text.contains("Övrigt:\n  - eva: PBX refused"), "{}", sv.text);
    assert!(sv.text.contains("Skapade:      3"));
    assert!(!sv.text.contains("stoppades"));
    assert!(
        sv.text.contains("Resultat: delvis lyckad\n\n  Skapade:"),
        "{}",
        sv.text
    );

    let en = templates
        .render(
            MailKind::RunReport,
            Language::En,
            &report_ctx(problems, Value::Null),
        )
        .unwrap();
    assert_eq!(en.subject, "Sync report for Acme AB: partly succeeded");
    assert!(en.text.contains("Field alias:\n  - cia: alias taken"));
    assert!(en.html.contains("<li>eva: PBX refused</li>"));
}

#[test]
fn run_report_shows_a_run_failure_and_no_user_problems() {
    let mut ctx = report_ctx(json!([]), json!("PBX answered 401 unauthorized"));
    ctx["outcome"] = json!("failed");
    let templates = Templates::load(None).unwrap();
    let sv = templates.render(MailKind::RunReport, Language::Sv, &ctx).unwrap();
    assert_eq!(sv.subject, "Synkrapport för Acme AB: misslyckades");
    assert!(sv.text.contains(
        "Resultat: misslyckades\n\nSynkningen stoppades: PBX answered 401 unauthorized\n\n  Skapade:"
    ));
    assert!(sv.text.contains("Inga problem med enskilda användare."));
    let en = templates.render(MailKind::RunReport, Language::En, &ctx).unwrap();
    assert!(en
        .html
        .contains("The sync stopped: PBX answered 401 unauthorized"));
}

#[test]
fn run_report_lists_at_most_200_problems() {
    let problems: Vec<Value> = (0..250)
        .map(|i| json!({"user": format!("user{i}"), "field": "alias", "message": "taken"}))
        .collect();
    let mail = Templates::load(None)
        .unwrap()
        .render(
            MailKind::RunReport,
            Language::En,
            &report_ctx(json!(problems), Value::Null),
        )
        .unwrap();
    assert_eq!(mail.text.matches(": taken").count(), 200);
    assert!(mail.text.contains("… and 50 more."));
}

#[test]
fn html_escapes_values_but_text_keeps_them() {
    let mut ctx = welcome_ctx();
    ctx["first_name"] = json!("<b>Eve</b> & co");
    let mail = Templates::load(None)
        .unwrap()
        .render(MailKind::Welcome, Language::En, &ctx)
        .unwrap();
    assert!(
        mail.html.contains("&lt;b&gt;Eve&lt;&#x2f;b&gt; &amp; co")
            || mail.html.contains("&lt;b&gt;Eve&lt;/b&gt; &amp; co"),
        "{}",
        mail.html
    );
    assert!(!mail.html.contains("<b>Eve</b>"));
    assert!(mail.text.contains("Hi <b>Eve</b> & co,"));
    assert_eq!(mail.subject, "Welcome to Infinity, <b>Eve</b> & co");
}

#[test]
fn subject_is_a_single_line() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("welcome.en.subject.txt"),
        "Hello\n  {{ first_name }}\n\n",
    )
    .unwrap();
    let mail = Templates::load(Some(dir.path()))
        .unwrap()
        .render(MailKind::Welcome, Language::En, &welcome_ctx())
        .unwrap();
    assert_eq!(mail.subject, "Hello Åsa");
}

#[test]
fn override_file_replaces_only_its_template() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("welcome.sv.txt"),
        "Tjena {{ first_name }}, nummer {{ pstn_fixed }}.",
    )
    .unwrap();
    let templates = Templates::load(Some(dir.path())).unwrap();
    let sv = templates
        .render(MailKind::Welcome, Language::Sv, &welcome_ctx())
        .unwrap();
    assert_eq!(sv.text, "Tjena Åsa, nummer 46812345678.");
    assert_eq!(sv.subject, "Välkommen till Infinity, Åsa");
    let en = templates
        .render(MailKind::Welcome, Language::En, &welcome_ctx())
        .unwrap();
    assert!(en.text.starts_with("Hi Åsa,"));
}

#[test]
fn broken_override_is_refused_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let broken = "<p>Hej {{ first_name }}</p>\n<p>\n{% if alias %}\n{{ alias }\n{% endif %}\n";
    std::fs::write(dir.path().join("welcome.sv.html"), broken).unwrap();
    let message = config_message(Templates::load(Some(dir.path())).unwrap_err());
    assert!(message.contains("welcome.sv.html"), "{message}");
    assert!(message.contains("line 4"), "{message}");
}

#[test]
fn override_using_an_unknown_variable_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("run_report.en.txt"), "ok\n{{ countz.created }}\n").unwrap();
    let message = config_message(Templates::load(Some(dir.path())).unwrap_err());
    assert!(message.contains("run_report.en.txt, line 2"), "{message}");
}

#[test]
fn missing_template_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let message = config_message(Templates::load(Some(&missing)).unwrap_err());
    assert!(message.contains("nope"), "{message}");
}

#[test]
fn context_missing_a_field_fails_to_render() {
    let err = Templates::load(None)
        .unwrap()
        .render(MailKind::Welcome, Language::Sv, &json!({"first_name": "Åsa"}))
        .unwrap_err();
    assert!(config_message(err).contains("welcome.sv"));
}

#[test]
fn preferred_language_picks_swedish_or_english() {
    assert_eq!(
        Language::from_preferred(Some("sv-SE"), Language::En),
        Language::Sv
    );
    assert_eq!(Language::from_preferred(Some("sv"), Language::En), Language::Sv);
    assert_eq!(
        Language::from_preferred(Some("SV_fi"), Language::En),
        Language::Sv
    );
    assert_eq!(
        Language::from_preferred(Some("en-US"), Language::Sv),
        Language::En
    );
    assert_eq!(Language::from_preferred(Some("en"), Language::Sv), Language::En);
    assert_eq!(
        Language::from_preferred(Some("de-DE"), Language::Sv),
        Language::Sv
    );
    assert_eq!(
        Language::from_preferred(Some("svenska"), Language::En),
        Language::En
    );
    assert_eq!(Language::from_preferred(Some(""), Language::En), Language::En);
    assert_eq!(Language::from_preferred(None, Language::Sv), Language::Sv);
}

#[test]
fn digest_lists_warnings_held_deletions_and_undelivered_welcome_mails() {
    let mut ctx = report_ctx(json!([]), json!("client secret expired"));
    ctx["outcome"] = json!("failed");
    ctx["error_code"] = json!("entra.7000222");
    ctx["standing_since"] = json!("2026-03-01 02:00 UTC");
    ctx["counts"]["held"] = json!(40);
    ctx["warnings"] = json!(["group Telephony matches 2 groups"]);
    ctx["mail_problems"] = json!([
        {"user": "bo.ek", "recipient": "", "kind": "welcome", "state": "no_address", "reply": null},
        {"user": "cia.ny", "recipient": "cia@acme.example", "kind": "welcome", "state": "failed", "reply": "550 no such user"},
    ]);
    let templates = Templates::load(None).unwrap();
    let en = templates.render(MailKind::RunReport, Language::En, &ctx).unwrap();
    assert!(
        en.text
            .contains("The sync stopped: client secret expired [entra.7000222]\n"),
        "{}",
        en.text
    );
    assert!(en.text.contains("stood since 2026-03-01 02:00 UTC"));
    assert!(
        en.text.contains("Held:     40 deletions held back"),
        "{}",
        en.text
    );
    assert!(en
        .text
        .contains("Warnings:\n  - group Telephony matches 2 groups\n"));
    assert!(en
        .text
        .contains("Welcome mails that did not reach their user (2):"));
    assert!(
        en.text.contains("  - bo.ek: no mail address in the directory\n"),
        "{}",
        en.text
    );
    assert!(en
        .text
        .contains("  - cia.ny <cia@acme.example>: refused: 550 no such user\n"));
    assert!(
        en.html
            .contains("<li>cia.ny &lt;cia@acme.example&gt;: refused: 550 no such user</li>"),
        "{}",
        en.html
    );
    let sv = templates.render(MailKind::RunReport, Language::Sv, &ctx).unwrap();
    assert!(sv.text.contains("Vilande:      40 borttagningar"), "{}", sv.text);
    assert!(sv.text.contains("  - bo.ek: ingen e-postadress i katalogen\n"));
}

#[test]
fn resolved_and_secret_expiry_mails_render_in_both_languages() {
    let templates = Templates::load(None).unwrap();
    let resolved = json!({
        "tenant_id": "acme", "company_name": "Acme AB", "error_code": "pbx.unauthorized",
        "error": "the PBX refused the token", "since": "2026-03-01 02:00 UTC",
    });
    let en = templates
        .render(MailKind::Resolved, Language::En, &resolved)
        .unwrap();
    assert_eq!(en.subject, "Resolved: the sync for Acme AB works again");
    assert!(en
        .text
        .contains("The error was: the PBX refused the token [pbx.unauthorized]"));
    let sv = templates
        .render(MailKind::Resolved, Language::Sv, &resolved)
        .unwrap();
    assert_eq!(sv.subject, "Löst: synkningen för Acme AB fungerar igen");

    let expiry =
        json!({"tenant_id": "acme", "company_name": "Acme AB", "expires_on": "2026-04-01", "days_left": 14});
    let en = templates
        .render(MailKind::SecretExpiry, Language::En, &expiry)
        .unwrap();
    assert_eq!(
        en.subject,
        "The Entra client secret for Acme AB expires in 14 days"
    );
    assert!(en.text.contains("expires on 2026-04-01"));
    assert!(en.text.contains("provider_settings.client_secret"));
    let sv = templates
        .render(MailKind::SecretExpiry, Language::Sv, &expiry)
        .unwrap();
    assert_eq!(
        sv.subject,
        "Klienthemligheten i Entra för Acme AB går ut om 14 dagar"
    );
}
