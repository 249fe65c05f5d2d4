package seckill_test

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"

	"github.com/cachesync/cachesync/seckill"
)

// Each privilege the sale needs is probed without changing a row, and
// every missing one is named with its GRANT.
func TestCheckGrants(t *testing.T) {
	standaloneOnly(t, whyMySQL)
	s := newStack(t)
	users := map[string][]string{
		"sk_all": {"SELECT, UPDATE ON shop.sk_items", "SELECT, INSERT, UPDATE ON shop.sk_orders", "INSERT ON shop.sk_failures", "BINLOG MONITOR ON *.*"},
		// The grants of a sale that only reads: what `validate` said ok to.
		"sk_read": {"SELECT ON shop.*"},
	}
	for u, grants := range users {
		s.exec("DROP USER IF EXISTS '" + u + "'@'%'")
		s.exec("CREATE USER '" + u + "'@'%' IDENTIFIED BY 'pw'")
		for _, g := range grants {
			s.exec("GRANT " + g + " TO '" + u + "'@'%'")
		}
	}
	s.exec("INSERT INTO sk_items (id, stock) VALUES (1, 5)")
	for _, tc := range []struct {
		user    string
		missing []string
	}{
		{"sk_all", nil},
		{"sk_read", []string{"GRANT UPDATE ON shop.sk_items", "GRANT INSERT ON shop.sk_orders", "GRANT UPDATE ON shop.sk_orders", "GRANT INSERT ON shop.sk_failures", "GRANT BINLOG MONITOR ON *.*"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			db, err := sql.Open("mysql", tc.user+":pw@tcp("+s.my.Addr()+")/shop")
			if err != nil {
				t.Fatal(err)
			}
			defer db.Close()
			cfg := seckill.Config{Enabled: true}
			cfg.SetDefaults()
			err = seckill.NewStore(db, "shop").CheckGrants(context.Background(), &cfg, tc.user, s.my.Addr())
			t.Logf("CheckGrants = %v", err)
			if tc.missing == nil {
				if err != nil {
					t.Fatalf("CheckGrants = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, seckill.ErrGrants) {
				t.Fatalf("CheckGrants = %v, want ErrGrants", err)
			}
			for _, m := range tc.missing {
				if !strings.Contains(err.Error(), "- "+m) {
					t.Errorf("error does not name %q", m)
				}
			}
			if n := strings.Count(err.Error(), "\n  - "); n != len(tc.missing) {
				t.Errorf("%d missing grants listed, want %d", n, len(tc.missing))
			}
		})
	}
	if n := s.int("SELECT COUNT(*) FROM sk_orders") + s.int("SELECT COUNT(*) FROM sk_failures"); n != 0 {
		t.Errorf("the probes wrote %d rows", n)
	}
	if st := s.int("SELECT stock FROM sk_items WHERE id = 1"); st != 5 {
		t.Errorf("stock %d after the probes, want 5", st)
	}
}
