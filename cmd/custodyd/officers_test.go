package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"
)

// officerEntry is one officer of a generated officers file.
func officerEntry(t *testing.T, name, user string) string {
	t.Helper()
	id, err := age.GenerateX25519Identity()
	if err != nil {
		t.Fatal(err)
	}
	_, vk, err := note.GenerateKey(rand.Reader, name)
	if err != nil {
		t.Fatal(err)
	}
	return fmt.Sprintf(`{"name":%q,"user":%q,"age_recipient":%q,"signer":%q}`, name, user, id.Recipient(), vk)
}

// TestOfficersReloadOnSIGHUP: SIGHUP reads the officers file again. A file
// that does not parse keeps the officers in force, and says why; a changed
// one takes effect (the ceremony routes see the new officers).
func TestOfficersReloadOnSIGHUP(t *testing.T) {
	d := setup(t)
	var cfg map[string]any
	data, err := os.ReadFile(d.config)
	if err != nil || json.Unmarshal(data, &cfg) != nil {
		t.Fatalf("reading the configuration: %v", err)
	}
	cfg["ceremony"] = map[string]any{"officers_file": "officers.json", "output_dir": "ceremonies"}
	data, _ = json.Marshal(cfg)
	writeFile(t, d.config, string(data))
	officers := filepath.Join(d.dir, "officers.json")
	root, other := officerEntry(t, "o1", "root"), officerEntry(t, "o2", "nobody")
	writeFile(t, officers, `{"version":1,"officers":[`+other+`]}`)
	writeFile(t, filepath.Join(d.dir, "policy.json"), strings.Replace(rootPolicy, `"roles":["admin"`, `"roles":["officer","admin"`, 1))
	d.start()
	if out, err := d.ctl("ceremony", "status"); err == nil || !strings.Contains(out, "not_officer") {
		t.Fatalf("root before it is an officer: %v\n%s", err, out)
	}

	writeFile(t, officers, `{"version":1,"officers":[`+root+`,`) // cut short
	d.signal(syscall.SIGHUP)
	d.waitLog("officers reload failed; keeping the officers in force")
	if out, err := d.ctl("ceremony", "status"); err == nil || !strings.Contains(out, "not_officer") {
		t.Fatalf("after a broken officers file: %v\n%s", err, out)
	}

	writeFile(t, officers, `{"version":1,"officers":[`+root+`,`+other+`]}`)
	d.signal(syscall.SIGHUP)
	d.waitLog("officers changed")
	if out, err := d.ctl("ceremony", "status"); err != nil || !strings.Contains(out, "you are officer o1") {
		t.Fatalf("root after the reload made it an officer: %v\n%s", err, out)
	}
}
