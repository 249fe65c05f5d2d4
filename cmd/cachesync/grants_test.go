package main

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// validate and run check the MySQL user's privileges and refuse, naming
// the missing GRANT, the user and the server; a refused login fails at
// once rather than after 30 s of retries ending in "context deadline
// exceeded". Before, validate said "ok" without REPLICATION SLAVE and run
// then retried the refused dump forever.
func TestGrantsChecked(t *testing.T) {
	if testing.Short() {
		t.Skip("child process test: skipped in -short mode")
	}
	e := newCrashEnv(t, 100)
	for _, q := range []string{
		"DROP USER IF EXISTS 'cdc_norepl'@'%'", "CREATE USER 'cdc_norepl'@'%' IDENTIFIED BY 'pw'",
		"GRANT BINLOG MONITOR ON *.* TO 'cdc_norepl'@'%'", "GRANT SELECT ON crash.* TO 'cdc_norepl'@'%'",
		"DROP USER IF EXISTS 'cdc_ok'@'%'", "CREATE USER 'cdc_ok'@'%' IDENTIFIED BY 'pw'",
		"GRANT REPLICATION SLAVE, BINLOG MONITOR ON *.* TO 'cdc_ok'@'%'", "GRANT SELECT ON crash.* TO 'cdc_ok'@'%'",
	} {
		mustExec(t, e.db, q)
	}
	// A Redis user that may not run INFO (in -@dangerous) nor touch the
	// rules' qty:* keys.
	if err := e.rdb.Do(context.Background(), "ACL", "SETUSER", "narrow", "on", ">pw", "~item*", "~cachesync:*", "~grp:*", "&*", "+@all", "-@dangerous").Err(); err != nil {
		t.Fatal(err)
	}
	config := func(user, pw string, redisUser ...string) string {
		c := strings.Replace(crashConfig(e.my.Addr(), e.rs.Addr(), 4242, 100), "  user: root\n", "  user: "+user+"\n  password: "+pw+"\n", 1)
		if len(redisUser) > 0 {
			c = strings.Replace(c, "redis:\n  addr: "+e.rs.Addr()+"\n", "redis:\n  addr: "+e.rs.Addr()+"\n  username: "+redisUser[0]+"\n  password: pw\n", 1)
		}
		path := filepath.Join(t.TempDir(), "cachesync.yaml")
		if err := os.WriteFile(path, []byte(c), 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	for _, tc := range []struct {
		name, user, pw string
		redisUser      []string
		want           []string // in stderr; nil: exit 0
	}{
		{"all grants", "cdc_ok", "pw", nil, nil},
		{"no REPLICATION SLAVE", "cdc_norepl", "pw", nil, []string{"GRANT REPLICATION SLAVE ON *.*", "cdc_norepl", e.my.Addr()}},
		{"wrong password", "cdc_ok", "nope", nil, []string{"access denied", "cdc_ok", e.my.Addr()}},
		{"redis user without INFO", "cdc_ok", "pw", []string{"narrow"}, []string{"INFO memory", "GET qty:0", `narrow`}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := config(tc.user, tc.pw, tc.redisUser...)
			cmds := [][]string{{"validate", "-config", path}}
			if tc.want != nil {
				cmds = append(cmds, []string{"run", "-config", path})
			}
			for _, args := range cmds {
				code, _, errOut := cli(t, e.bin, args...)
				if tc.want == nil {
					if code != 0 {
						t.Errorf("%s: exit %d, want 0", args[0], code)
					}
					continue
				}
				if code != 1 {
					t.Errorf("%s: exit %d, want 1", args[0], code)
				}
				for _, w := range tc.want {
					if !strings.Contains(errOut, w) {
						t.Errorf("%s: stderr does not name %q", args[0], w)
					}
				}
				if strings.Contains(errOut, "could not build arguments") {
					t.Errorf("%s: the root cause is buried in fx's wiring", args[0])
				}
				if strings.Contains(errOut, "deadline exceeded") {
					t.Errorf("%s: ran into its deadline instead of failing on the refusal", args[0])
				}
			}
		})
	}
}
