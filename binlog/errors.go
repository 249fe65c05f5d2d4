package binlog

import (
	"errors"
	"fmt"
	"strings"

	"github.com/go-mysql-org/go-mysql/mysql"
)

// ErrFatal wraps errors that reconnecting cannot cure (a purged binlog, a
// refused login or privilege, a row that does not match its table map).
var ErrFatal = errors.New("binlog")

// ErrPurged (with ErrFatal) means the server no longer has the binlog at
// the start position.
var ErrPurged = errors.New("start position purged")

// Error numbers go-mysql has no name for.
const (
	erAccountLockedMySQL   = 3118 // ER_ACCOUNT_HAS_BEEN_LOCKED (MySQL)
	erAccountLockedMariaDB = 4151 // ER_ACCOUNT_HAS_BEEN_LOCKED (MariaDB)
)

// refused lists the server errors, by number, that a reconnect cannot cure:
// the account or its privileges must change first. MySQL and MariaDB share
// these numbers.
var refused = map[uint16]string{
	mysql.ER_DBACCESS_DENIED_ERROR:           "access to the database denied",
	mysql.ER_ACCESS_DENIED_ERROR:             "access denied (wrong user or password; MariaDB also says so for a missing REPLICATION SLAVE)",
	mysql.ER_ACCESS_DENIED_NO_PASSWORD_ERROR: "login refused",
	mysql.ER_HOST_NOT_PRIVILEGED:             "this host may not connect",
	mysql.ER_HOST_IS_BLOCKED:                 "this host is blocked (FLUSH HOSTS on the server)",
	mysql.ER_TABLEACCESS_DENIED_ERROR:        "missing table privilege",
	mysql.ER_COLUMNACCESS_DENIED_ERROR:       "missing column privilege",
	mysql.ER_SPECIFIC_ACCESS_DENIED_ERROR:    "missing privilege (the user needs REPLICATION SLAVE and REPLICATION CLIENT)",
	mysql.ER_NOT_SUPPORTED_AUTH_MODE:         "authentication method not supported",
	mysql.ER_MUST_CHANGE_PASSWORD:            "the password has expired",
	mysql.ER_MUST_CHANGE_PASSWORD_LOGIN:      "the password has expired",
	erAccountLockedMySQL:                     "the account is locked",
	erAccountLockedMariaDB:                   "the account is locked",
}

// classify wraps err with ErrFatal when no reconnect can cure it, and
// also with ErrPurged when the server no longer has the binlog the dump
// asked for; other errors are returned as they are. It goes by the
// server's error number (go-mysql returns a *mysql.MyError, wrapped): the
// wording differs between servers and versions (MySQL 8.0.23 reworded the
// purged-binlog error).
func classify(err error, start Start) error {
	var me *mysql.MyError
	if err == nil || errors.Is(err, ErrFatal) || !errors.As(err, &me) {
		return err
	}
	if why, ok := refused[me.Code]; ok {
		return fmt.Errorf("%w: %s: %w", ErrFatal, why, err)
	}
	if me.Code != mysql.ER_MASTER_FATAL_ERROR_READING_BINLOG {
		return err
	}
	// 1236: the dump thread gave up. One cause is cured by reconnecting:
	// another replica registered with our server_id took the dump over
	// (during a leader handover, the other daemon).
	msg := strings.ToLower(me.Message)
	if strings.Contains(msg, "same server_uuid/server_id") {
		return err
	}
	if isPurged(msg) {
		return fmt.Errorf("%w: %w: %w (the binlog at %s is gone: restart with mysql.start.from=current, or delete the checkpoint to resnapshot)",
			ErrFatal, ErrPurged, err, start)
	}
	// Corrupt or truncated binlog, an event over max_allowed_packet, a
	// start beyond the end of the file: reading again fails again.
	return fmt.Errorf("%w: the server cannot send the binlog from %s: %w", ErrFatal, start, err)
}

// isPurged recognises, in the lower-cased message of an error 1236, the
// causes that mean the binlog at the start position no longer exists.
func isPurged(msg string) bool {
	for _, s := range []string{
		"could not find first log file", // file:pos start, MySQL and MariaDB
		"could not find next log",       // the next file was purged while reading
		"purged",                        // MySQL GTID start (both wordings), MariaDB "binlog files have been purged"
		"requested to start from gtid",  // MariaDB: the GTID is not in the binlog
	} {
		if strings.Contains(msg, s) {
			return true
		}
	}
	return false
}
