package binlog

import (
	"regexp"
	"strings"
)

// truncateRE matches TRUNCATE [TABLE] [schema.]table, names plain or in
// backquotes (inside them, two backquotes stand for one).
var truncateRE = regexp.MustCompile("(?is)^\\s*TRUNCATE\\s+(?:TABLE\\s+)?(`(?:[^`]|``)+`|[^\\s.`;]+)(?:\\s*\\.\\s*(`(?:[^`]|``)+`|[^\\s.`;]+))?\\s*;?\\s*$")

// truncatedTable returns the lower-case "schema.table" a TRUNCATE statement
// names, resolving an unqualified table against schema (the statement's
// default database); ok is false for anything else.
func truncatedTable(q, schema string) (name string, ok bool) {
	m := truncateRE.FindStringSubmatch(q)
	if m == nil {
		return "", false
	}
	unquote := func(s string) string {
		if len(s) >= 2 && s[0] == '`' {
			return strings.ReplaceAll(s[1:len(s)-1], "``", "`")
		}
		return s
	}
	db, tbl := schema, unquote(m[1])
	if m[2] != "" {
		db, tbl = tbl, unquote(m[2])
	}
	if db == "" {
		return "", false
	}
	return strings.ToLower(db + "." + tbl), true
}
