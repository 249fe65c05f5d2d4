package binlog

import (
	"context"
	"database/sql"
	"errors"
	"strings"
	"testing"
)

// Each privilege the CDC needs is probed as the configured user, and every
// missing one is named with the GRANT that gives it.
func TestCheckGrants(t *testing.T) {
	db := freshDB(t, "grants")
	for _, q := range []string{"CREATE TABLE a (id INT PRIMARY KEY)", "CREATE TABLE b (id INT PRIMARY KEY)"} {
		if _, err := db.Exec(q); err != nil {
			t.Fatal(err)
		}
	}
	admin := mariadb.DB(t, "")
	users := map[string][]string{
		"g_all":      {"REPLICATION SLAVE, BINLOG MONITOR ON *.*", "SELECT ON grants.*"},
		"g_norepl":   {"BINLOG MONITOR ON *.*", "SELECT ON grants.*"},
		"g_nomon":    {"REPLICATION SLAVE ON *.*", "SELECT ON grants.*"},
		"g_noselect": {"REPLICATION SLAVE, BINLOG MONITOR ON *.*", "SELECT ON grants.a"},
	}
	for u, grants := range users {
		qs := []string{"DROP USER IF EXISTS '" + u + "'@'%'", "CREATE USER '" + u + "'@'%' IDENTIFIED BY 'pw'"}
		for _, g := range grants {
			qs = append(qs, "GRANT "+g+" TO '"+u+"'@'%'")
		}
		for _, q := range qs {
			if _, err := admin.Exec(q); err != nil {
				t.Fatalf("%s: %v", q, err)
			}
		}
	}
	for _, tc := range []struct {
		user    string
		missing []string // substrings of the error, one per missing grant
	}{
		{"g_all", nil},
		{"g_norepl", []string{"GRANT REPLICATION SLAVE ON *.*"}},
		{"g_nomon", []string{"GRANT BINLOG MONITOR ON *.*"}},
		{"g_noselect", []string{"GRANT SELECT ON grants.b"}},
	} {
		t.Run(tc.user, func(t *testing.T) {
			cfg := Config{Addr: mariadb.Addr(), User: tc.user, Password: "pw", ServerID: 7201}
			udb := userDB(t, tc.user, "pw", "grants")
			err := CheckGrants(context.Background(), cfg, "mariadb", udb, []string{"grants.a", "grants.b"})
			t.Logf("CheckGrants = %v", err)
			if tc.missing == nil {
				if err != nil {
					t.Fatalf("CheckGrants = %v, want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrGrants) {
				t.Fatalf("CheckGrants = %v, want ErrGrants", err)
			}
			for _, m := range tc.missing {
				if !strings.Contains(err.Error(), m) {
					t.Errorf("error does not name %q", m)
				}
			}
			if n := strings.Count(err.Error(), "\n  - "); n != len(tc.missing) {
				t.Errorf("%d missing grants listed, want %d", n, len(tc.missing))
			}
			if !strings.Contains(err.Error(), tc.user) || !strings.Contains(err.Error(), mariadb.Addr()) {
				t.Error("error names neither the user nor the server")
			}
		})
	}
}

// userDB opens a pool on database name as user.
func userDB(t *testing.T, user, pw, name string) *sql.DB {
	t.Helper()
	db, err := sql.Open("mysql", user+":"+pw+"@tcp("+mariadb.Addr()+")/"+name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}
