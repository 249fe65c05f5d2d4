package binlog

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/go-mysql-org/go-mysql/replication"
	"github.com/rs/zerolog"
)

// checkSettings against servers as they answer: MySQL 8 (whose
// binlog_row_value_options may be PARTIAL_JSON), MySQL before 8.0.3
// (no such variable) and MariaDB (no such variable: not even asked).
func TestCheckSettings(t *testing.T) {
	good := map[string]string{"log_bin": "1", "binlog_format": "ROW", "binlog_row_image": "FULL",
		"binlog_row_metadata": "FULL", "binlog_row_value_options": ""}
	with := func(name, value string) map[string]string {
		m := map[string]string{}
		for k, v := range good {
			m[k] = v
		}
		if value == "<none>" {
			delete(m, name)
		} else {
			m[name] = value
		}
		return m
	}
	mysql8 := ServerInfo{Flavor: "mysql", Version: "8.4.3"}
	mariadb := ServerInfo{Flavor: "mariadb", Version: "10.11.19-MariaDB"}
	for _, tc := range []struct {
		name    string
		info    ServerInfo
		vars    map[string]string
		wantErr string // "" = no error; else every space-separated word appears
	}{
		{"MySQL 8 as needed", mysql8, good, ""},
		{"MySQL 8 PARTIAL_JSON", mysql8, with("binlog_row_value_options", "PARTIAL_JSON"), `binlog_row_value_options "PARTIAL_JSON" binlog_row_value_options=''`},
		{"MySQL 8 partial_json", mysql8, with("binlog_row_value_options", "partial_json"), "binlog_row_value_options"},
		{"MySQL before 8.0.3", ServerInfo{Flavor: "mysql", Version: "8.0.2-dmr"}, with("binlog_row_value_options", "<none>"), ""},
		{"MariaDB", mariadb, with("binlog_row_value_options", "<none>"), ""},
		{"MariaDB MINIMAL row image", mariadb, with("binlog_row_image", "MINIMAL"), "binlog_row_image=FULL"},
		{"binlog off", mysql8, with("log_bin", "OFF"), "log_bin=ON"},
		{"log_bin ON", mysql8, with("log_bin", "ON"), ""},
		{"no binlog_row_metadata", ServerInfo{Flavor: "mysql", Version: "5.7.44"}, with("binlog_row_metadata", "<none>"), "binlog_row_metadata MySQL ≥ 8.0"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := checkSettings(tc.info, func(name string) (string, bool, error) {
				if tc.info.Flavor == "mariadb" && name == "binlog_row_value_options" {
					t.Errorf("asked MariaDB for %s", name)
				}
				v, ok := tc.vars[name]
				return v, ok, nil
			})
			switch {
			case tc.wantErr == "" && err != nil:
				t.Errorf("checkSettings = %v, want nil", err)
			case tc.wantErr != "" && err == nil:
				t.Errorf("checkSettings = nil, want an error naming %s", tc.wantErr)
			case err != nil:
				for _, w := range strings.Fields(tc.wantErr) {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("checkSettings = %v, want %q in it", err, w)
					}
				}
			}
		})
	}
	boom := errors.New("connection lost")
	if err := checkSettings(mysql8, func(string) (string, bool, error) { return "", false, boom }); !errors.Is(err, boom) {
		t.Errorf("checkSettings with a failing read = %v, want it wrapped", err)
	}
}

// The real server's answers: MariaDB passes, without
// binlog_row_value_options.
func TestCheckServerMariaDB(t *testing.T) {
	info, err := CheckServer(context.Background(), mariadb.DB(t, ""))
	if err != nil || info.Flavor != "mariadb" {
		t.Errorf("CheckServer = %+v, %v; want mariadb, nil", info, err)
	}
}

// A session that sets PARTIAL_JSON despite the global check writes
// partial JSON updates: the stream stops, naming the variable.
func TestPartialJSONRowsEvent(t *testing.T) {
	r := &reader{
		src:    NewSource(Config{MaxTxnChanges: 100}, "mysql", []string{"shop.doc"}, zerolog.Nop(), nil),
		out:    make(chan *Txn, 1),
		file:   "binlog.000001",
		tables: map[uint64]*Table{7: NewTable("shop", "doc", []string{"id", "js"}, nil)},
	}
	ev := &replication.BinlogEvent{
		Header: &replication.EventHeader{EventType: replication.PARTIAL_UPDATE_ROWS_EVENT, LogPos: 500},
		Event:  &replication.RowsEvent{TableID: 7, Rows: [][]any{{int32(1), `{"a": 1}`}, {int32(1), `{"a": 2}`}}},
	}
	err := r.handle(context.Background(), ev)
	if !errors.Is(err, ErrFatal) || !strings.Contains(err.Error(), "binlog_row_value_options") {
		t.Errorf("partial JSON update: %v, want ErrFatal naming binlog_row_value_options", err)
	}
}
