package policy

import (
	"slices"
	"strings"
	"testing"
)

func TestReadGroupFile(t *testing.T) {
	t.Parallel()
	text := strings.Join([]string{
		"# comment",
		"",
		"root:x:0:",
		"adm:x:4:syslog,alice",
		"+nisgroup",
		"-excluded::",
		"adm:x:44:bob", // duplicate: the first wins
		"big:*:4294967294:a.b_c-d$",
	}, "\n") + "\n"
	g, err := readGroupFile(strings.NewReader(text))
	if err != nil {
		t.Fatal(err)
	}
	if len(g) != 3 {
		t.Errorf("%d groups: %v", len(g), g)
	}
	if e := g["adm"]; e.gid != 4 || !slices.Equal(e.members, []string{"syslog", "alice"}) {
		t.Errorf("adm = %+v", e)
	}
	if e := g["root"]; e.gid != 0 || len(e.members) != 0 {
		t.Errorf("root = %+v", e)
	}
	if e := g["big"]; e.gid != 4294967294 || !slices.Equal(e.members, []string{"a.b_c-d$"}) {
		t.Errorf("big = %+v", e)
	}
}

func TestReadGroupFileErrors(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct{ text, want string }{
		{"root:x:0:\nadm:x:4\n", "line 2: 3 fields"},
		{"adm:x:4:a:b\n", "line 1: 5 fields"},
		{":x:4:\n", `line 1: invalid group name ""`},
		{"adm:x::\n", `invalid gid ""`},
		{"adm:x:-4:\n", `invalid gid "-4"`},
		{"adm:x:04:\n", `invalid gid "04"`},
		{"adm:x:4294967295:\n", `invalid gid "4294967295"`},
		{"adm:x:4294967296:\n", `invalid gid "4294967296"`},
		{"adm:x:four:\n", `invalid gid "four"`},
		{"adm:x:4:alice,\n", `invalid member name ""`},
		{"adm:x:4:alice, bob\n", `invalid member name " bob"`},
		{"adm:x:4:123\n", `invalid member name "123"`},
		{"ad m:x:4:\n", `invalid group name "ad m"`},
		{"adm:x:4:\r\n", `invalid member name "\r"`},
	} {
		_, err := readGroupFile(strings.NewReader(tt.text))
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%q: err = %v; want %q", tt.text, err, tt.want)
		}
	}
}
