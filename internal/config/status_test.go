package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

const testVault = `"vault":{"address":"http://127.0.0.1:8200","token_file":"t","signers":[{"name":"judge-1","public_key":"11qYAYKxCrfVS/7TyWQHOg7hcvPapiMlrwIaaPcHURo="}],"quorum":1}`

func TestParticipantStatusConfig(t *testing.T) {
	load := func(body string) (Config, error) {
		p := filepath.Join(t.TempDir(), "c.json")
		os.WriteFile(p, []byte(body), 0o644)
		return Load(p)
	}
	c, err := load(`{}`)
	if err != nil {
		t.Fatal(err)
	}
	if _, on := c.StatusConfig(); on {
		t.Fatal("status on without a vault section")
	}
	c, err = load(`{` + testVault + `}`)
	if err != nil {
		t.Fatal(err)
	}
	sc, on := c.StatusConfig()
	if !on || sc.Path != "custody/participants" || sc.CacheTTL.Std() != 10*time.Second || sc.MaxStale.Std() != 2*time.Minute {
		t.Fatalf("defaults with a vault section: %v %+v", on, sc)
	}
	if c, err = load(`{` + testVault + `,"participant_status":{"enabled":false}}`); err != nil {
		t.Fatal(err)
	}
	if _, on := c.StatusConfig(); on {
		t.Fatal("enabled false")
	}
	for body, want := range map[string]string{
		`{"participant_status":{}}`: "participant_status: needs a vault section",
		`{` + testVault + `,"participant_status":{"cache_ttl":"1m","max_stale":"10s"}}`: "participant_status.max_stale",
		`{` + testVault + `,"participant_status":{"path":"../x"}}`:                      "participant_status.path",
		`{` + testVault + `,"participant_status":{"cache_ttl":"1ms"}}`:                  "participant_status.cache_ttl",
		`{` + testVault + `,"participant_status":{"ttl":"1s"}}`:                         "ttl",
	} {
		if _, err := load(body); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", body, err, want)
		}
	}
}
