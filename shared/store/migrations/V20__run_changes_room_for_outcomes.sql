-- Each planned change is written twice: stored by the differ, then its
-- outcome recorded by the applier. With full pages the outcome's new row
-- version went to another page, with a new entry in both of the table's
-- indexes. Half-full pages leave room for it on the same page (a HOT
-- update: no index entry), as neither index covers the outcome.
ALTER TABLE run_changes SET (fillfactor = 50);
