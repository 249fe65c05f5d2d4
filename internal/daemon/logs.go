package daemon

import (
	"context"
	"fmt"
	"strings"

	"github.com/go-sql-driver/mysql"
	"github.com/redis/go-redis/v9"
	"github.com/rs/zerolog"
)

// RouteDriverLogs sends what the MySQL driver and go-redis log (lost
// connections, pool dial failures) to log, as warnings tagged with their
// component, instead of plain-text lines in the JSON log on stderr. The
// drivers' loggers are global: the last call wins.
func RouteDriverLogs(log zerolog.Logger) {
	_ = mysql.SetLogger(mysqlLogger{log.With().Str("component", "mysql-driver").Logger()})
	redis.SetLogger(redisLogger{log.With().Str("component", "redis-driver").Logger()})
}

type mysqlLogger struct{ log zerolog.Logger }

func (l mysqlLogger) Print(v ...any) {
	l.log.Warn().Msg(strings.TrimSpace(fmt.Sprint(v...)))
}

type redisLogger struct{ log zerolog.Logger }

func (l redisLogger) Printf(_ context.Context, format string, v ...any) {
	l.log.Warn().Msg(strings.TrimSpace(fmt.Sprintf(format, v...)))
}
