package testenv

import (
	"bufio"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Save writes the server's data set to an RDB file (SAVE) and returns the
// file's bytes. The file is removed again, so that a later Start still
// begins empty; StartFrom starts from the bytes instead.
func (r *Redis) Save() ([]byte, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	c, err := net.DialTimeout("tcp", r.Addr(), time.Second)
	if err != nil {
		return nil, fmt.Errorf("testenv: redis SAVE: %w", err)
	}
	defer c.Close()
	if err := c.SetDeadline(time.Now().Add(time.Minute)); err != nil {
		return nil, err
	}
	if _, err := c.Write([]byte("SAVE\r\n")); err != nil {
		return nil, fmt.Errorf("testenv: redis SAVE: %w", err)
	}
	line, err := bufio.NewReader(c).ReadString('\n')
	if err != nil {
		return nil, fmt.Errorf("testenv: redis SAVE: %w", err)
	}
	if line != "+OK\r\n" {
		return nil, fmt.Errorf("testenv: redis SAVE answered %q", line)
	}
	path := r.rdbPath()
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("testenv: %w", err)
	}
	return b, os.Remove(path)
}

// StartFrom starts a stopped or killed server with the data set of an RDB
// file from Save, like a Redis restored from an older backup, and waits
// until it answers PING. The file is removed once it is loaded.
func (r *Redis) StartFrom(rdb []byte) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if err := r.startable(); err != nil {
		return err
	}
	if err := os.WriteFile(r.rdbPath(), rdb, 0o600); err != nil {
		return fmt.Errorf("testenv: %w", err)
	}
	defer os.Remove(r.rdbPath())
	return r.start()
}

// rdbPath is where redis-server reads and writes its RDB file (--dir and
// the default dbfilename).
func (r *Redis) rdbPath() string { return filepath.Join(r.Dir, "dump.rdb") }
