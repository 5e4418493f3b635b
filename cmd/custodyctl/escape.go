package main

import (
	"fmt"
	"strings"
	"unicode"
	"unicode/utf16"
	"unicode/utf8"
)

// Everything the reviewer's tools print from a log entry passes through
// escapeText (text, table, CSV, HTML report) or escapeJSON (JSON output):
// entries carry strings that applications chose (transaction ids, end-user
// headers, executable paths), and a string must not move the reviewer's
// cursor, forge a row, recolour or clear the terminal, or reorder what the
// reviewer reads.

// unsafeRune reports whether r must not reach a terminal or a page as
// itself: C0 controls (tab, CR and LF included), DEL, C1 controls
// (U+0080–U+009F, among them the one-byte CSI U+009B), Unicode format
// characters (category Cf: the bidi embeddings, overrides and isolates
// U+202A–U+202E and U+2066–U+2069, zero-width characters, U+FEFF, tag
// characters) and the line and paragraph separators U+2028, U+2029.
func unsafeRune(r rune) bool {
	return r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) ||
		unicode.Is(unicode.Cf, r) || unicode.Is(unicode.Zl, r) || unicode.Is(unicode.Zp, r)
}

// escapeText returns s with every unsafe rune written as a Go-style escape
// (\n, \r, \t, \x1b, \u202e, \U000e0001), every byte of invalid UTF-8 as
// \xNN, and the backslash itself as \\, so the result is printable, on one
// line, and unambiguous: distinct strings stay distinct. Safe strings are
// returned unchanged (no allocation).
func escapeText(s string) string {
	i := 0
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		if r == '\\' || unsafeRune(r) || r == utf8.RuneError && n == 1 {
			break
		}
		i += n
	}
	if i == len(s) {
		return s
	}
	var b strings.Builder
	b.Grow(len(s) + 8)
	b.WriteString(s[:i])
	for i < len(s) {
		r, n := utf8.DecodeRuneInString(s[i:])
		switch {
		case r == utf8.RuneError && n == 1:
			fmt.Fprintf(&b, `\x%02x`, s[i])
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x80 && unsafeRune(r):
			fmt.Fprintf(&b, `\x%02x`, r)
		case r <= 0xffff && unsafeRune(r):
			fmt.Fprintf(&b, `\u%04x`, r)
		case unsafeRune(r):
			fmt.Fprintf(&b, `\U%08x`, r)
		default:
			b.WriteString(s[i : i+n])
		}
		i += n
	}
	return b.String()
}

// escapeJSON rewrites the unsafe runes that encoding/json leaves as they
// are (DEL, C1 controls, format characters; it escapes C0 itself) as \u
// escapes, so that JSON output is as safe to print as escapeText's and
// still decodes to the same values. b must be JSON from encoding/json:
// outside strings it is ASCII (its indentation and line ends are left
// alone), so every such rune is inside a string, where \u is its escape.
func escapeJSON(b []byte) []byte {
	i := 0
	for i < len(b) {
		r, n := utf8.DecodeRune(b[i:])
		if r >= 0x7f && unsafeRune(r) {
			break
		}
		i += n
	}
	if i == len(b) {
		return b
	}
	out := make([]byte, 0, len(b)+12)
	out = append(out, b[:i]...)
	for i < len(b) {
		r, n := utf8.DecodeRune(b[i:])
		switch {
		case r < 0x7f || !unsafeRune(r):
			out = append(out, b[i:i+n]...)
		case r <= 0xffff:
			out = fmt.Appendf(out, `\u%04x`, r)
		default:
			hi, lo := utf16.EncodeRune(r)
			out = fmt.Appendf(out, `\u%04x\u%04x`, hi, lo)
		}
		i += n
	}
	return out
}

// csvCell neutralises a spreadsheet formula (OWASP "CSV injection"): a
// cell that starts with =, +, -, @, tab or CR gets a leading apostrophe,
// so a spreadsheet shows it as text. Apply it after escapeText.
func csvCell(s string) string {
	if s != "" && strings.ContainsRune("=+-@\t\r", rune(s[0])) {
		return "'" + s
	}
	return s
}
