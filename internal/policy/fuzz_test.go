package policy

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

var updateCorpus = flag.Bool("update-corpus", false, "rewrite testdata/fuzz/FuzzParse and FuzzReadGroupFile from the seeds in fuzz_test.go")

// parseSeeds are real policies, valid and not, for FuzzParse.
func parseSeeds(t testing.TB) [][]byte {
	example, err := os.ReadFile(filepath.Join("..", "..", "policies", "example.json"))
	if err != nil {
		t.Fatal(err)
	}
	seeds := []string{
		string(example),
		decryptPolicy,
		policyV1,
		doc(stdPurposes, `{"name": "apps", "users": ["daemon"], "groups": ["adm", "nogroup"], "roles": ["application", "reviewer"], "act_as": [
			{"participants": ["*"], "purposes": ["dispute"], "windows": [{"days": ["fri"], "start": "22:00", "end": "02:00", "time_zone": "America/New_York", "comment": "night"}]},
			{"participants": ["client-1", "miner-"+"*"], "purposes": ["settlement"], "windows": [{"start": "00:00", "end": "24:00"}]}]}`),
		doc(stdPurposes, `{"name": "a", "groups": ["adm"], "roles": ["application"]}, {"name": "b", "groups": ["daemon"], "roles": ["admin"]}`),
		doc(`{"name": "x", "fields": ["a", "*"]}`, `{"name": "a", "users": ["cpol-nosuchuser"], "roles": ["admn"]}`),
		`{"version": 1, "version": 1}`,
		doc(stdPurposes, `{"name": "sealer", "users": ["daemon"], "roles": ["application"], "seal_for": [{"participants": ["miner-*", "client-1"], "transactions": ["tx-*", "t1"]}, {"participants": ["*"], "transactions": []}]}`),
		`{"version": 1, "principals": [{"name": "a", "users": ["root"], "roles": ["admin"], "act_as": [{"participants": ["c"], "purposes": ["p"], "windows": [{"start": "9:00", "end": "25:00", "time_zone": "Local"}]}]}]}`,
		withStatus(`{"seal": {"sanctions": "clear"}, "decrypt": {"kyc": "verified"}, "purposes": [{"purpose": "settlement", "kyb": "verified", "regulatory_approval": ["CH"]}]}`), // status_test.go
		factorPolicy, // mfa_test.go
	}
	out := make([][]byte, len(seeds))
	for i, s := range seeds {
		out[i] = []byte(s)
	}
	return out
}

var groupSeeds = []string{
	"root:x:0:\ndaemon:x:1:\nadm:x:4:syslog,alice\n# c\n\n+nis\nusers:x:100:\nnogroup:x:65534:\n",
	"adm:x:4\n",
	"adm:x:4:a,,b\n",
	"adm:x:04:\r\n",
}

func FuzzParse(f *testing.F) {
	for _, s := range parseSeeds(f) {
		f.Add(s)
	}
	now := time.Date(2024, 1, 19, 23, 30, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, data []byte) {
		p, err := Parse(data)
		if err != nil {
			if p != nil {
				t.Fatal("Parse returned a policy and an error")
			}
			if !errors.Is(err, ErrInvalid) {
				t.Fatalf("error does not satisfy ErrInvalid: %v", err)
			}
			return
		}
		if !json.Valid(data) {
			t.Fatal("Parse accepted invalid JSON")
		}
		q, err := Parse(data)
		if err != nil || q.Summary() != p.Summary() {
			t.Fatalf("second Parse differs: %v", err)
		}
		// Decisions never panic, and every principal the policy identifies
		// exists in it.
		for _, c := range []Caller{{0, 0, 1}, {1, 1, 1}, {1, 4, 1}, {65534, 65534, 1}, {4242, 100, 1}} {
			pr, err := p.Identify(c)
			if err != nil {
				if !errors.Is(err, ErrUnknownCaller) {
					t.Fatalf("Identify: %v", err)
				}
				continue
			}
			if err := p.Authorize(pr, PermHealth); err != nil {
				t.Fatalf("identified principal %q fails health: %v", pr.Name, err)
			}
			for _, purpose := range []string{"settlement", "dispute", "x"} {
				d, err := p.AuthorizeDecrypt(pr, "client-1", purpose, nil, now)
				if err != nil && !errors.Is(err, ErrDenied) {
					t.Fatalf("AuthorizeDecrypt: %v", err)
				}
				if err == nil && len(d.Fields()) == 0 {
					t.Fatal("allowed with no visible fields")
				}
			}
		}
	})
}

func FuzzReadGroupFile(f *testing.F) {
	for _, s := range groupSeeds {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		groups, err := readGroupFile(strings.NewReader(string(data)))
		if err != nil {
			return
		}
		// Round trip: every entry, written back, reads as itself.
		for name, e := range groups {
			line := fmt.Sprintf("%s:x:%d:%s\n", e.name, e.gid, strings.Join(e.members, ","))
			again, err := readGroupFile(strings.NewReader(line))
			if err != nil {
				t.Fatalf("%q: %v", line, err)
			}
			if a := again[name]; a.gid != e.gid || !slices.Equal(a.members, e.members) {
				t.Fatalf("%q read back as %+v", line, a)
			}
		}
	})
}

// TestFuzzCorpus keeps testdata/fuzz in step with the seeds; run with
// -update-corpus to rewrite it.
func TestFuzzCorpus(t *testing.T) {
	write := func(target string, seeds [][]byte) {
		dir := filepath.Join("testdata", "fuzz", target)
		for i, s := range seeds {
			path := filepath.Join(dir, fmt.Sprintf("seed-%02d", i))
			want := "go test fuzz v1\n[]byte(" + strconv.Quote(string(s)) + ")\n"
			if *updateCorpus {
				if err := os.MkdirAll(dir, 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
					t.Fatal(err)
				}
				continue
			}
			got, err := os.ReadFile(path)
			if err != nil || string(got) != want {
				t.Errorf("%s is missing or stale (%v); run go test -run TestFuzzCorpus -update-corpus", path, err)
			}
		}
	}
	write("FuzzParse", parseSeeds(t))
	var gs [][]byte
	for _, s := range groupSeeds {
		gs = append(gs, []byte(s))
	}
	write("FuzzReadGroupFile", gs)
}
