package seckill

import (
	"context"
	"database/sql"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/go-sql-driver/mysql"
)

// Order statuses as stored in sk_orders.status. "queued" is never stored:
// it is an order reserved in Redis whose row the consumer has not written.
const (
	StatusQueued   = "queued"
	StatusCreated  = "created"
	StatusPaid     = "paid"
	StatusCanceled = "canceled"
	StatusFailed   = "failed"
)

// Order is one order row.
type Order struct {
	ID         string    `json:"order_id"`
	User       int64     `json:"user_id"`
	Item       int64     `json:"item_id"`
	Status     string    `json:"status"`
	Reason     string    `json:"reason,omitempty"`
	ReservedAt time.Time `json:"reserved_at"`
	CreatedAt  time.Time `json:"created_at,omitzero"`
	UpdatedAt  time.Time `json:"updated_at,omitzero"`
}

// Store is the sale's MySQL side. MySQL is the truth: every change the
// sale makes to stock happens here, in one transaction with the order
// change it belongs to, and reaches Redis through CDC.
type Store struct {
	db                   *sql.DB
	items, orders, fails string
}

// NewStore uses the sk_* tables of database.
func NewStore(db *sql.DB, database string) *Store {
	q := "`" + database + "`."
	return &Store{db: db, items: q + "sk_items", orders: q + "sk_orders", fails: q + "sk_failures"}
}

// ErrNotFound: no such order or item.
var ErrNotFound = errors.New("not found")

// ErrBelowZero: a restock would take the stock below zero.
var ErrBelowZero = errors.New("stock would go below zero")

// Outcome of storing an order.
type Outcome int

const (
	Stored    Outcome = iota // created: one unit of stock taken
	SoldOut                  // stored as failed: MySQL had no stock left
	Duplicate                // the order was stored before (redelivery): nothing done
)

// PlaceOrder stores the order and takes one unit of stock in ONE
// transaction. Stock is only taken WHERE stock >= 1, so MySQL never goes
// below zero; without stock the order is stored as failed. An order id
// already present makes it a no-op (a redelivered message). A user who
// already holds a live order for the item gets this one stored as failed.
func (s *Store) PlaceOrder(ctx context.Context, o Order) (Outcome, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	res, err := tx.ExecContext(ctx, "UPDATE "+s.items+" SET stock = stock - 1 WHERE id = ? AND stock >= 1", o.Item)
	if err != nil {
		return 0, fmt.Errorf("take stock: %w", err)
	}
	n, err := res.RowsAffected()
	if err != nil {
		return 0, err
	}
	status, reason, out := StatusCreated, "", Stored
	if n == 0 {
		status, reason, out = StatusFailed, "sold out", SoldOut
	}
	err = s.insert(ctx, tx, o, status, reason)
	switch {
	case dupKey(err, "PRIMARY"):
		return Duplicate, nil // rollback gives the stock back
	case dupKey(err, "sk_orders_one_live") && out == Stored:
		// A second live order for the user: keep the stock, store it failed.
		if _, err := tx.ExecContext(ctx, "UPDATE "+s.items+" SET stock = stock + 1 WHERE id = ?", o.Item); err != nil {
			return 0, err
		}
		if err := s.insert(ctx, tx, o, StatusFailed, "user already holds an order for this item"); err != nil {
			if dupKey(err, "PRIMARY") {
				return Duplicate, nil
			}
			return 0, err
		}
		out = SoldOut
	case err != nil:
		return 0, fmt.Errorf("insert order: %w", err)
	}
	if err := tx.Commit(); err != nil {
		return 0, fmt.Errorf("commit order: %w", err)
	}
	return out, nil
}

func (s *Store) insert(ctx context.Context, tx *sql.Tx, o Order, status, reason string) error {
	_, err := tx.ExecContext(ctx, "INSERT INTO "+s.orders+" (order_id, user_id, item_id, status, reason, reserved_at) VALUES (?, ?, ?, ?, ?, ?)",
		o.ID, o.User, o.Item, status, reason, o.ReservedAt.UTC())
	return err
}

// Fence stores the order as canceled unless a row exists: the order can
// then never be created (a late message is a duplicate), and CDC releases
// its reservation in Redis. It reports whether the row was written.
func (s *Store) Fence(ctx context.Context, o Order, reason string) (bool, error) {
	res, err := s.db.ExecContext(ctx, "INSERT IGNORE INTO "+s.orders+" (order_id, user_id, item_id, status, reason, reserved_at) VALUES (?, ?, ?, 'canceled', ?, ?)",
		o.ID, o.User, o.Item, reason, o.ReservedAt.UTC())
	if err != nil {
		return false, err
	}
	n, err := res.RowsAffected()
	return n == 1, err
}

// RecordFailure writes a failure-table row for an order given up on.
func (s *Store) RecordFailure(ctx context.Context, o Order, attempts int, cause string, payload []byte) error {
	_, err := s.db.ExecContext(ctx, "INSERT INTO "+s.fails+" (order_id, item_id, user_id, attempts, error, payload) VALUES (?, ?, ?, ?, ?, ?)",
		o.ID, o.Item, o.User, attempts, cause, payload)
	return err
}

// Get reads one order.
func (s *Store) Get(ctx context.Context, id string) (Order, error) {
	var o Order
	err := s.db.QueryRowContext(ctx, "SELECT order_id, user_id, item_id, status, reason, reserved_at, created_at, updated_at FROM "+s.orders+" WHERE order_id = ?", id).
		Scan(&o.ID, &o.User, &o.Item, &o.Status, &o.Reason, &o.ReservedAt, &o.CreatedAt, &o.UpdatedAt)
	if errors.Is(err, sql.ErrNoRows) {
		return o, ErrNotFound
	}
	return o, err
}

// Pay moves user's created order to paid. It returns the order as it is
// after the attempt; ErrNotFound when there is no row of user's (another
// user's order is not touched, and not told apart from none).
func (s *Store) Pay(ctx context.Context, id string, user int64) (Order, bool, error) {
	res, err := s.db.ExecContext(ctx, "UPDATE "+s.orders+" SET status = 'paid' WHERE order_id = ? AND user_id = ? AND status = 'created'", id, user)
	if err != nil {
		return Order{}, false, err
	}
	n, err := res.RowsAffected()
	if err != nil {
		return Order{}, false, err
	}
	o, err := s.Get(ctx, id)
	if err == nil && o.User != user {
		return Order{}, false, ErrNotFound
	}
	return o, n == 1, err
}

// CancelUnpaid cancels up to limit created orders older than age, each in
// one transaction with returning its unit of stock. It returns the orders
// canceled. A concurrent payment wins: the update is conditional.
func (s *Store) CancelUnpaid(ctx context.Context, age time.Duration, limit int) ([]Order, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT order_id, user_id, item_id FROM "+s.orders+
		" WHERE status = 'created' AND created_at < NOW(6) - INTERVAL ? MICROSECOND ORDER BY created_at LIMIT ?", age.Microseconds(), limit)
	if err != nil {
		return nil, err
	}
	var due []Order
	for rows.Next() {
		var o Order
		if err := rows.Scan(&o.ID, &o.User, &o.Item); err != nil {
			rows.Close()
			return nil, err
		}
		due = append(due, o)
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return nil, err
	}
	var done []Order
	for _, o := range due {
		ok, err := s.cancel(ctx, o)
		if err != nil {
			return done, err
		}
		if ok {
			done = append(done, o)
		}
	}
	return done, nil
}

func (s *Store) cancel(ctx context.Context, o Order) (bool, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return false, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	res, err := tx.ExecContext(ctx, "UPDATE "+s.orders+" SET status = 'canceled', reason = 'unpaid timeout' WHERE order_id = ? AND status = 'created'", o.ID)
	if err != nil {
		return false, err
	}
	if n, err := res.RowsAffected(); err != nil || n == 0 {
		return false, err
	}
	if _, err := tx.ExecContext(ctx, "UPDATE "+s.items+" SET stock = stock + 1 WHERE id = ?", o.Item); err != nil {
		return false, err
	}
	return true, tx.Commit()
}

// Restock adds n (may be negative, never below zero) to an item's stock and
// returns the new stock.
func (s *Store) Restock(ctx context.Context, item int64, n int64) (int64, error) {
	tx, err := s.db.BeginTx(ctx, nil)
	if err != nil {
		return 0, err
	}
	defer tx.Rollback() //nolint:errcheck // after Commit it is a no-op
	var stock int64
	if err := tx.QueryRowContext(ctx, "SELECT stock FROM "+s.items+" WHERE id = ? FOR UPDATE", item).Scan(&stock); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return 0, ErrNotFound
		}
		return 0, err
	}
	if stock+n < 0 {
		return stock, fmt.Errorf("%w: %d%+d", ErrBelowZero, stock, n)
	}
	if _, err := tx.ExecContext(ctx, "UPDATE "+s.items+" SET stock = stock + ? WHERE id = ?", n, item); err != nil {
		return 0, err
	}
	return stock + n, tx.Commit()
}

// Items lists every item id.
func (s *Store) Items(ctx context.Context) ([]int64, error) {
	rows, err := s.db.QueryContext(ctx, "SELECT id FROM "+s.items+" ORDER BY id")
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var ids []int64
	for rows.Next() {
		var id int64
		if err := rows.Scan(&id); err != nil {
			return nil, err
		}
		ids = append(ids, id)
	}
	return ids, rows.Err()
}

// ItemExists reports whether sk_items has a row with id item.
func (s *Store) ItemExists(ctx context.Context, item int64) (bool, error) {
	var one int
	err := s.db.QueryRowContext(ctx, "SELECT 1 FROM "+s.items+" WHERE id = ?", item).Scan(&one)
	if errors.Is(err, sql.ErrNoRows) {
		return false, nil
	}
	return err == nil, err
}

// ItemState is an item as MySQL has it.
type ItemState struct {
	Stock  int64
	Live   map[int64]string // user → order, for created and paid orders
	Orders map[string]bool  // every order id of the item asked about
}

// readItem reads an item within q (a consistent snapshot); orders limits
// the Orders lookup to those ids.
func (s *Store) readItem(ctx context.Context, q interface {
	QueryRowContext(context.Context, string, ...any) *sql.Row
	QueryContext(context.Context, string, ...any) (*sql.Rows, error)
}, item int64, orders []string) (ItemState, error) {
	st := ItemState{Live: map[int64]string{}, Orders: map[string]bool{}}
	if err := q.QueryRowContext(ctx, "SELECT stock FROM "+s.items+" WHERE id = ?", item).Scan(&st.Stock); err != nil {
		if errors.Is(err, sql.ErrNoRows) {
			return st, ErrNotFound
		}
		return st, err
	}
	rows, err := q.QueryContext(ctx, "SELECT user_id, order_id FROM "+s.orders+" WHERE item_id = ? AND status IN ('created', 'paid')", item)
	if err != nil {
		return st, err
	}
	for rows.Next() {
		var u int64
		var o string
		if err := rows.Scan(&u, &o); err != nil {
			rows.Close()
			return st, err
		}
		st.Live[u] = o
	}
	rows.Close()
	if err := rows.Err(); err != nil {
		return st, err
	}
	for len(orders) > 0 {
		n := min(len(orders), 500)
		args := make([]any, n)
		for i := range n {
			args[i] = orders[i]
		}
		rows, err := q.QueryContext(ctx, "SELECT order_id FROM "+s.orders+" WHERE order_id IN (?"+strings.Repeat(",?", n-1)+")", args...)
		if err != nil {
			return st, err
		}
		for rows.Next() {
			var o string
			if err := rows.Scan(&o); err != nil {
				rows.Close()
				return st, err
			}
			st.Orders[o] = true
		}
		rows.Close()
		if err := rows.Err(); err != nil {
			return st, err
		}
		orders = orders[n:]
	}
	return st, nil
}

// dupKey reports a duplicate-key error on the named index.
func dupKey(err error, index string) bool {
	var me *mysql.MySQLError
	if !errors.As(err, &me) || me.Number != 1062 {
		return false
	}
	return strings.Contains(me.Message, "'"+index+"'") || strings.Contains(me.Message, "."+index+"'")
}

// transient reports whether retrying err may succeed.
func transient(err error) bool {
	var me *mysql.MySQLError
	if errors.As(err, &me) {
		switch me.Number {
		case 1205, 1213, 1040, 1053, 1158, 1159, 1160, 1161, 2002, 2003, 2006, 2013, 1927, 1290:
			return true
		}
		return false
	}
	return err != nil // driver.ErrBadConn, network errors, timeouts
}

// DB is the store's connection pool.
func (s *Store) DB() *sql.DB { return s.db }
