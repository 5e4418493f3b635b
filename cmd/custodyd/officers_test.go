package main

import (
	"crypto/rand"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
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

// TestRefusesUnsafeOfficersFile: an officers file that someone other than
// root or the daemon's uid owns, or that group or others can write, names
// officers no one vouches for: custodyd refuses to start with it, and a
// SIGHUP with such a file keeps the officers in force.
func TestRefusesUnsafeOfficersFile(t *testing.T) {
	d := setup(t)
	var cfg map[string]any
	data, err := os.ReadFile(d.config)
	if err != nil || json.Unmarshal(data, &cfg) != nil {
		t.Fatalf("reading the configuration: %v", err)
	}
	cfg["ceremony"] = map[string]any{"officers_file": "officers.json", "output_dir": "ceremonies"}
	data, _ = json.Marshal(cfg)
	writeFile(t, d.config, string(data))
	writeFile(t, filepath.Join(d.dir, "policy.json"), strings.Replace(rootPolicy, `"roles":["admin"`, `"roles":["officer","admin"`, 1))
	officers := filepath.Join(d.dir, "officers.json")
	root, other := officerEntry(t, "o1", "root"), officerEntry(t, "o2", "nobody")
	for _, tc := range []struct {
		name  string
		mode  os.FileMode
		owner int
		want  string
	}{
		{"group-writable", 0o664, 0, "mode 0664"},
		{"world-writable", 0o646, 0, "mode 0646"},
		{"owned by uid 4242", 0o644, 4242, "owned by uid 4242"},
	} {
		writeFile(t, officers, `{"version":1,"officers":[`+root+`]}`)
		os.Chmod(officers, tc.mode)
		os.Chown(officers, tc.owner, -1)
		out, err := exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", d.config).CombinedOutput()
		if err == nil || !strings.Contains(string(out), "ceremony.officers_file") || !strings.Contains(string(out), tc.want) {
			t.Errorf("%s: started or unclear error: %v\n%s", tc.name, err, out)
		}
		if _, err := os.Stat(d.socket); err == nil {
			t.Errorf("%s: socket created", tc.name)
		}
		os.Remove(officers)
	}

	writeFile(t, officers, `{"version":1,"officers":[`+other+`]}`)
	d.start()
	if out, err := d.ctl("ceremony", "status"); err == nil || !strings.Contains(out, "not_officer") {
		t.Fatalf("root before the reload: %v\n%s", err, out)
	}
	// Uid 4242 rewrites the file to make root an officer: the reload refuses it.
	writeFile(t, officers, `{"version":1,"officers":[`+root+`,`+other+`]}`)
	os.Chown(officers, 4242, -1)
	d.signal(syscall.SIGHUP)
	d.waitLog("officers reload failed; keeping the officers in force")
	if out, err := d.ctl("ceremony", "status"); err == nil || !strings.Contains(out, "not_officer") {
		t.Fatalf("root after a reload of a foreign-owned officers file: %v\n%s", err, out)
	}
}
