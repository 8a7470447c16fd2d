-- WISH-2007: create wishlist_items, its enums, indexes and priority check (schema of WISH-2000).
-- The table is new in this migration, so plain CREATE INDEX takes no lock on live rows.
CREATE TYPE wishlist_store AS ENUM ('LEGO', 'Barweer', 'Cata', 'BrickLink', 'Other');
CREATE TYPE wishlist_currency AS ENUM ('USD', 'EUR', 'GBP', 'CAD', 'AUD');

CREATE TABLE wishlist_items (
  id UUID PRIMARY KEY DEFAULT gen_random_uuid(),
  user_id TEXT NOT NULL,
  title TEXT NOT NULL,
  store wishlist_store NOT NULL,
  set_number TEXT,
  source_url TEXT,
  image_url TEXT,
  price TEXT,
  currency wishlist_currency DEFAULT 'USD',
  piece_count INTEGER,
  release_date TIMESTAMP,
  tags JSONB DEFAULT '[]',
  priority INTEGER DEFAULT 0,
  notes TEXT,
  sort_order INTEGER NOT NULL DEFAULT 0,
  created_at TIMESTAMP NOT NULL DEFAULT now(),
  updated_at TIMESTAMP NOT NULL DEFAULT now(),
  created_by TEXT,
  updated_by TEXT,
  CONSTRAINT priority_range_check CHECK (priority >= 0 AND priority <= 5)
);

CREATE INDEX idx_wishlist_user_id ON wishlist_items(user_id);
CREATE INDEX idx_wishlist_user_sort ON wishlist_items(user_id, sort_order);
CREATE INDEX idx_wishlist_user_store ON wishlist_items(user_id, store);
CREATE INDEX idx_wishlist_user_priority ON wishlist_items(user_id, priority);
CREATE INDEX idx_wishlist_user_store_priority ON wishlist_items(user_id, store, priority);
