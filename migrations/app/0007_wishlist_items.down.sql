-- WISH-2007 rollback, as documented in the story. Destroys all wishlist data:
-- only safe before WISH-2001 goes live (see docs/runbook.md).
DROP TABLE IF EXISTS wishlist_items CASCADE;
DROP TYPE IF EXISTS wishlist_store CASCADE;
DROP TYPE IF EXISTS wishlist_currency CASCADE;
