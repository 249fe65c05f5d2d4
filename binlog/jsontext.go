package binlog

import "strings"

// mysqlJSONText turns the text go-mysql renders for a MySQL binary JSON
// value (RenderJSONAsMySQLText: MySQL's key order and number forms,
// compact) into the text MySQL's SELECT prints, so that the stream writes
// what the snapshot read: a space after every ',' and ':' between tokens,
// and no escapes MySQL does not write (Go's JSON encoder escapes <, >, &,
// U+2028 and U+2029; MySQL escapes only '"', '\' and control characters).
func mysqlJSONText[T string | []byte](b T) string {
	if len(b) == 0 {
		// An empty value (INSERT IGNORE of NULL into NOT NULL): MySQL
		// reads it as the JSON null literal.
		return "null"
	}
	var out strings.Builder
	out.Grow(len(b) + len(b)/8)
	inString := false
	for i := 0; i < len(b); i++ {
		c := b[i]
		switch {
		case inString && c == '\\' && i+1 < len(b):
			if b[i+1] == 'u' && i+5 < len(b) {
				if r, ok := unescaped[string(b[i+2:i+6])]; ok {
					out.WriteString(r)
					i += 5
					continue
				}
			}
			out.WriteByte(c)
			out.WriteByte(b[i+1])
			i++
		case c == '"':
			inString = !inString
			out.WriteByte(c)
		case !inString && (c == ',' || c == ':'):
			out.WriteByte(c)
			out.WriteByte(' ')
		default:
			out.WriteByte(c)
		}
	}
	return out.String()
}

// unescaped maps the \u escapes Go's encoder adds to what MySQL writes.
var unescaped = map[string]string{"003c": "<", "003e": ">", "0026": "&", "2028": "\u2028", "2029": "\u2029"}
