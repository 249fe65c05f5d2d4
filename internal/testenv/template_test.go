package testenv

import (
	"os"
	"path/filepath"
	"testing"
)

// TestMariaDBTemplate makes the template of mariadbTemplate in an empty
// cache directory over a damaged one (an interrupted copy, say), and starts
// a server on it. Not parallel: it swaps the process's template.
func TestMariaDBTemplate(t *testing.T) {
	bin, err := LookBinary("mariadb-install-db", "mariadb-server")
	if err != nil {
		t.Fatal(err)
	}
	server, err := LookBinary("mariadbd", "mariadb-server")
	if err != nil {
		t.Fatal(err)
	}
	templateMu.Lock()
	saved := templateDir
	templateDir = ""
	templateMu.Unlock()
	t.Cleanup(func() {
		templateMu.Lock()
		templateDir = saved
		templateMu.Unlock()
	})
	cache := t.TempDir()
	t.Setenv("XDG_CACHE_HOME", cache)
	base := filepath.Join(cache, "cachesync-testenv")
	stale := filepath.Join(base, "mariadb-0000000000000000") // another MariaDB build's
	if err := os.MkdirAll(stale, 0o755); err != nil {
		t.Fatal(err)
	}

	dir, err := mariadbTemplate(bin, server)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(dir) != base || !templateComplete(dir) {
		t.Fatalf("template %s: not a complete one in %s", dir, base)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the other build's template is still there (%v)", err)
	}
	// Damaged: the next process makes it again.
	if err := os.Remove(filepath.Join(dir, "ibdata1")); err != nil {
		t.Fatal(err)
	}
	templateMu.Lock()
	templateDir = ""
	templateMu.Unlock()
	if again, err := mariadbTemplate(bin, server); err != nil || again != dir || !templateComplete(dir) {
		t.Fatalf("template over a damaged one: %s, %v (complete: %v)", again, err, templateComplete(dir))
	}
	if left, _ := filepath.Glob(filepath.Join(base, ".install-*")); len(left) > 0 {
		t.Errorf("work directories left: %v", left)
	}

	m := StartMariaDB(t)
	if err := m.DB(t, "tmpl").Ping(); err != nil {
		t.Fatal(err)
	}
}
