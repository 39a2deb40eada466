-- The round the tenant's last plan was made from: `usersync plan` and the
-- API's dry run take their scope (filter-group members) from it. A run that
-- read several rounds (a fetcher resumed it) planned only the current one.
ALTER TABLE tenant_plans ADD COLUMN run_id uuid, ADD COLUMN round_id uuid;
