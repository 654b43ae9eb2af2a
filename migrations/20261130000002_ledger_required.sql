-- Every writer now names the ledger: without a default, a row can never land in `default`
-- by omission (README, "Ledgers and authorization").
ALTER TABLE accounts ALTER COLUMN ledger DROP DEFAULT;
ALTER TABLE transfers ALTER COLUMN ledger DROP DEFAULT;
ALTER TABLE entries ALTER COLUMN ledger DROP DEFAULT;
