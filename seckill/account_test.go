package seckill_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/cachesync/cachesync/config"
	"github.com/cachesync/cachesync/internal/daemon"
	"go.uber.org/fx"
	"go.uber.org/fx/fxevent"
)

// With seckill.mysql the sale reaches MySQL under its own account, which
// needs only the sale's grants (no REPLICATION SLAVE); without them the
// daemon does not start, naming the missing GRANT.
func TestSaleAccount(t *testing.T) {
	s := newStack(t)
	s.exec("DROP USER IF EXISTS 'sale'@'%'")
	s.exec("CREATE USER 'sale'@'%' IDENTIFIED BY 'sale-pw'")
	s.exec("GRANT SELECT, UPDATE ON shop.sk_items TO 'sale'@'%'")
	s.exec("GRANT SELECT, INSERT ON shop.sk_orders TO 'sale'@'%'") // no UPDATE yet
	s.exec("GRANT BINLOG MONITOR ON *.* TO 'sale'@'%'")            // the jobs role waits for CDC

	cfg, err := config.Parse([]byte(s.configYAML(0, 0, "mysql: {user: sale, password: sale-pw}")), nil)
	if err != nil {
		t.Fatal(err)
	}
	app := fx.New(fx.WithLogger(func() fxevent.Logger { return fxevent.NopLogger }), daemon.Options(cfg))
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	err = app.Start(ctx)
	if err == nil {
		_ = app.Stop(ctx)
		t.Fatal("daemon started with a sale account missing grants")
	}
	for _, w := range []string{"GRANT UPDATE ON shop.sk_orders", "GRANT INSERT ON shop.sk_failures", `"sale"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("start-up error does not name %q: %v", w, err)
		}
	}

	s.exec("GRANT UPDATE ON shop.sk_orders TO 'sale'@'%'")
	s.exec("GRANT INSERT ON shop.sk_failures TO 'sale'@'%'")
	d := s.start("mysql: {user: sale, password: sale-pw}")
	s.addItem(7, 3)
	if r, err := d.reserve(7, 42); err != nil || r.Status != 202 {
		t.Fatalf("reserve: %+v, %v", r, err)
	}
	s.eventually(30*time.Second, "the order stored by the consumer", func() bool {
		return s.int("SELECT COUNT(*) FROM sk_orders WHERE item_id = 7 AND user_id = 42 AND status = 'created'") == 1
	})
	if n := s.int("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'sale'"); n == 0 {
		t.Error("no connection of the sale's account: the sale did not use it")
	}
}
