-- Flash-sale tables (MariaDB 10.6+ / MySQL 8). Loaded by `make run`
-- (scripts/dev-up.sh) and by the tests; cachesync never creates tables.
-- The database name is seckill.database (default shop).
CREATE TABLE IF NOT EXISTS sk_items (
  id         BIGINT       NOT NULL PRIMARY KEY,
  name       VARCHAR(200) NOT NULL DEFAULT '',
  stock      INT          NOT NULL,
  updated_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  CONSTRAINT sk_items_stock_not_negative CHECK (stock >= 0)
);

-- One row per order. A user holds at most one live (created or paid)
-- order per item; canceled and failed orders do not block a new one.
CREATE TABLE IF NOT EXISTS sk_orders (
  order_id    VARCHAR(64)  NOT NULL PRIMARY KEY,
  user_id     BIGINT       NOT NULL,
  item_id     BIGINT       NOT NULL,
  status      VARCHAR(16)  NOT NULL,
  reason      VARCHAR(200) NOT NULL DEFAULT '',
  reserved_at TIMESTAMP(6) NOT NULL,
  created_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  updated_at  TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6) ON UPDATE CURRENT_TIMESTAMP(6),
  live_user   BIGINT GENERATED ALWAYS AS (IF(status IN ('created', 'paid'), user_id, NULL)) STORED,
  CONSTRAINT sk_orders_status CHECK (status IN ('created', 'paid', 'canceled', 'failed')),
  UNIQUE KEY sk_orders_one_live (live_user, item_id),
  KEY sk_orders_item (item_id, status),
  KEY sk_orders_unpaid (status, created_at)
);

-- Orders the consumer could not store after its retries (also sent to
-- the dead-letter topic).
CREATE TABLE IF NOT EXISTS sk_failures (
  id         BIGINT       NOT NULL AUTO_INCREMENT PRIMARY KEY,
  order_id   VARCHAR(64)  NOT NULL,
  item_id    BIGINT       NOT NULL,
  user_id    BIGINT       NOT NULL,
  attempts   INT          NOT NULL,
  error      TEXT         NOT NULL,
  payload    BLOB         NOT NULL,
  created_at TIMESTAMP(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6),
  KEY sk_failures_order (order_id)
);
