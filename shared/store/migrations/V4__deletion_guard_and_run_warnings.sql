-- An operator's approval of deletions the mass-deletion guard held back. The
-- next run that plans the tenant uses it (and records which run did).
CREATE TABLE deletion_approvals (
    id           bigserial PRIMARY KEY,
    tenant_id    text NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    approved_at  timestamptz NOT NULL DEFAULT now(),
    used_by_run  uuid
);
CREATE INDEX deletion_approvals_open ON deletion_approvals (tenant_id) WHERE used_by_run IS NULL;

-- Run-level warnings for the report: conflicting users, held deletions.
ALTER TABLE runs ADD COLUMN warnings jsonb NOT NULL DEFAULT '[]';
