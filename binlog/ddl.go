package binlog

import (
	"regexp"
	"strings"
)

// Statements from the binlog are never logged as text: DDL such as
// CREATE USER … IDENTIFIED BY 'pw' carries passwords in clear, and
// statement-format DML carries customer data. Logs name the statement's
// kind and, for table statements, the table.

// ddlRE takes a statement's leading keywords and, after TABLE, the name.
var ddlRE = regexp.MustCompile("(?is)^\\s*([a-z]+)(?:\\s+(?:online|ignore|temporary|or\\s+replace|if\\s+not\\s+exists))*(?:\\s+(table|view|index|database|schema|user|role|trigger|procedure|function|event|sequence|server))?(?:\\s+if\\s+(?:not\\s+)?exists)?(?:\\s+((?:`(?:[^`]|``)+`|[a-z0-9_$]+)(?:\\s*\\.\\s*(?:`(?:[^`]|``)+`|[a-z0-9_$]+))?))?")

// describeStatement returns the kind of statement q ("ALTER TABLE",
// "CREATE USER", "UPDATE") and, for TABLE statements, the lower-case
// "schema.table" it names (resolved against schema); nothing else of it.
func describeStatement(q, schema string) (kind, table string) {
	m := ddlRE.FindStringSubmatch(q)
	if m == nil {
		return "other", ""
	}
	kind = strings.ToUpper(m[1])
	if m[2] != "" {
		kind += " " + strings.ToUpper(m[2])
	}
	if strings.EqualFold(m[2], "table") && m[3] != "" {
		parts := strings.SplitN(m[3], ".", 2)
		unq := func(s string) string {
			s = strings.TrimSpace(s)
			if len(s) >= 2 && s[0] == '`' {
				return strings.ReplaceAll(s[1:len(s)-1], "``", "`")
			}
			return s
		}
		db, name := schema, unq(parts[0])
		if len(parts) == 2 {
			db, name = name, unq(parts[1])
		}
		if db != "" {
			table = strings.ToLower(db + "." + name)
		}
	}
	return kind, table
}

// ruledSchema reports whether schema holds a ruled table.
func (s *Source) ruledSchema(schema string) bool {
	schema = strings.ToLower(schema) + "."
	for t := range s.watch {
		if strings.HasPrefix(t, schema) {
			return true
		}
	}
	return false
}
