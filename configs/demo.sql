-- Demo schema: the seed's t_goods(goodsId, stock) plus name and price.
CREATE DATABASE IF NOT EXISTS shop;
USE shop;
CREATE TABLE IF NOT EXISTS t_goods (
  goodsId INT PRIMARY KEY,
  name    VARCHAR(100) NOT NULL,
  price   DECIMAL(10,2) NOT NULL,
  stock   INT NOT NULL,
  status  VARCHAR(16) NOT NULL DEFAULT 'on_sale'
) ENGINE=InnoDB;
INSERT IGNORE INTO t_goods (goodsId, name, price, stock) VALUES
  (1, 'mechanical keyboard', 399.00, 10),
  (2, 'usb-c cable', 19.90, 500),
  (3, 'monitor arm', 249.50, 0);
