package policy

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// maxGroupFileSize bounds what readGroupFile accepts.
const maxGroupFileSize = 16 << 20

// groupEntry is one line of /etc/group.
type groupEntry struct {
	name    string
	gid     uint32
	members []string // user names, in file order
}

// readGroupFile parses group(5) text strictly: every entry line has exactly
// four ':'-separated fields, a non-empty name, a decimal gid below 2^32-1, and
// a member list of non-empty, comma-separated names without spaces. Empty
// lines, lines starting with '#', and NIS compat lines starting with '+' or
// '-' are skipped. When a name appears twice the first entry wins, as in
// glibc. Any other line is an error naming its line number.
func readGroupFile(r io.Reader) (map[string]groupEntry, error) {
	data, err := io.ReadAll(io.LimitReader(r, maxGroupFileSize+1))
	if err != nil {
		return nil, err
	}
	if len(data) > maxGroupFileSize {
		return nil, fmt.Errorf("larger than %d bytes", maxGroupFileSize)
	}
	groups := make(map[string]groupEntry)
	// Split on '\n' only: a '\r' is not part of the format and is rejected.
	for i, text := range strings.Split(string(data), "\n") {
		if text == "" || text[0] == '#' || text[0] == '+' || text[0] == '-' {
			continue
		}
		e, err := parseGroupLine(text)
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", i+1, err)
		}
		if _, dup := groups[e.name]; !dup {
			groups[e.name] = e
		}
	}
	return groups, nil
}

func parseGroupLine(text string) (groupEntry, error) {
	f := strings.Split(text, ":")
	if len(f) != 4 {
		return groupEntry{}, fmt.Errorf("%d fields, want 4 (name:password:gid:members)", len(f))
	}
	if !validSystemName(f[0]) {
		return groupEntry{}, fmt.Errorf("invalid group name %q", f[0])
	}
	gid, err := strconv.ParseUint(f[2], 10, 32)
	if err != nil || gid == 1<<32-1 || f[2][0] == '+' || (len(f[2]) > 1 && f[2][0] == '0') {
		return groupEntry{}, fmt.Errorf("group %q: invalid gid %q", f[0], f[2])
	}
	e := groupEntry{name: f[0], gid: uint32(gid)}
	if f[3] != "" {
		for _, m := range strings.Split(f[3], ",") {
			if !validSystemName(m) {
				return groupEntry{}, fmt.Errorf("group %q: invalid member name %q", f[0], m)
			}
			e.members = append(e.members, m)
		}
	}
	return e, nil
}

// validSystemName accepts what Debian's useradd and groupadd accept, loosely:
// 1 to 64 bytes, no ':' ',' '/' whitespace or control characters, not
// starting with '-', '+' or '#', and not all digits (a number is a uid or
// gid, not a name).
func validSystemName(s string) bool {
	if s == "" || len(s) > 64 || s[0] == '-' || s[0] == '+' || s[0] == '#' {
		return false
	}
	digits := true
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == ':' || c == ',' || c == '/' {
			return false
		}
		if c < '0' || c > '9' {
			digits = false
		}
	}
	return !digits
}
