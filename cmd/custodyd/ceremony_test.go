package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"filippo.io/age"
	"golang.org/x/mod/sumdb/note"

	"custody/hsm"
	"custody/hsm/hsmtest"
	"custody/internal/ceremony"
	"custody/internal/shamir"
)

// withCeremony adds a ceremony section to d's configuration.
func withCeremony(t *testing.T, d *daemon, section map[string]any) {
	t.Helper()
	var cfg map[string]any
	data, _ := os.ReadFile(d.config)
	json.Unmarshal(data, &cfg)
	cfg["ceremony"] = section
	data, _ = json.Marshal(cfg)
	writeFile(t, d.config, string(data))
}

// TestNoAutoGenesis: with ceremony.auto_genesis false the daemon creates no
// escrow key at start and says that audit decrypts wait for genesis.
func TestNoAutoGenesis(t *testing.T) {
	d := setup(t)
	withCeremony(t, d, map[string]any{"auto_genesis": false})
	d.start()
	d.waitLog("genesis ceremony has not run")
	if strings.Contains(d.log.String(), "custody/escrow/v1") {
		t.Fatalf("an escrow key was created at start:\n%s", d.log)
	}
	// Sealing needs the escrow key: refused with a code that says what to do.
	if out, err := d.ctl("participants", "register", "p-1"); err != nil {
		t.Fatalf("register: %v\n%s", err, out)
	}
	req := `{"transaction_id":"tx-1","job_id":"j","confidential":{"a":1},"participants":["p-1"]}`
	cmd := exec.Command(filepath.Join(binDir, "custodyctl"), "--socket", d.socket, "encrypt", "-")
	cmd.Stdin = strings.NewReader(req)
	if out, err := cmd.CombinedOutput(); err == nil || !strings.Contains(string(out), "genesis_required") {
		t.Errorf("encrypt before genesis: %v\n%s", err, out)
	}
	d.signal(syscall.SIGTERM)
	<-d.done
}

// TestBadOfficersFile: an officers file that does not parse stops the
// daemon at start, naming the field.
func TestBadOfficersFile(t *testing.T) {
	d := setup(t)
	writeFile(t, filepath.Join(d.dir, "officers.json"), `{"version": 1, "officers": []}`)
	withCeremony(t, d, map[string]any{"officers_file": "officers.json", "output_dir": "ceremonies"})
	out, err := exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", d.config).CombinedOutput()
	if err == nil || !strings.Contains(string(out), "ceremony.officers_file") {
		t.Fatalf("started or unclear error: %v\n%s", err, out)
	}
}

// TestTokenInitSplitsSOPIN: custodyd token init --officers makes an SO PIN,
// splits it 2-of-3 among the officers and writes it nowhere: the share files
// and the record are 0600 in a new 0700 directory, no file the daemon can
// read holds the PIN, two officers' shares give it back and it logs the
// security officer in (a backup wraps), one share does not. The daemon's
// configuration cannot name an SO PIN file any more.
func TestTokenInitSplitsSOPIN(t *testing.T) {
	dir := t.TempDir()
	var entries []string
	var ids []*age.X25519Identity
	for i, user := range []string{"root", "daemon", "nobody"} {
		id, _ := age.GenerateX25519Identity()
		_, vk, _ := note.GenerateKey(rand.Reader, fmt.Sprintf("o%d", i+1))
		entries = append(entries, fmt.Sprintf(`{"name":"o%d","user":%q,"age_recipient":%q,"signer":%q}`, i+1, user, id.Recipient(), vk))
		ids = append(ids, id)
	}
	writeFile(t, filepath.Join(dir, "officers.json"), `{"version":1,"officers":[`+strings.Join(entries, ",")+`]}`)
	userPIN := filepath.Join(dir, "user.pin")
	if err := os.WriteFile(userPIN, []byte("user-pin-1234\n"), 0o400); err != nil {
		t.Fatal(err)
	}
	label := fmt.Sprintf("init-%d", os.Getpid())
	writeFile(t, filepath.Join(dir, "c.json"), fmt.Sprintf(`{"pkcs11": {"module": %q, "token_label": %q, "pin_file": "user.pin"}}`, hsmtest.ModulePath(), label))
	init := func(args ...string) (string, error) {
		out, err := exec.Command(filepath.Join(binDir, "custodyd"), append([]string{"token", "init", "--config", filepath.Join(dir, "c.json")}, args...)...).CombinedOutput()
		return string(out), err
	}
	if out, err := init(); err == nil || !strings.Contains(out, "--no-backups") {
		t.Fatalf("token init without a choice: %v\n%s", err, out)
	}
	out := filepath.Join(dir, "shares")
	if msg, err := init("--officers", filepath.Join(dir, "officers.json"), "--so-pin-threshold", "2", "--out", out); err != nil {
		t.Fatalf("token init: %v\n%s", err, msg)
	}
	if st, err := os.Stat(out); err != nil || st.Mode().Perm() != 0o700 {
		t.Fatalf("share directory: %v %v", st.Mode(), err)
	}
	files, _ := os.ReadDir(out)
	if len(files) != 4 {
		t.Fatalf("%d files in the share directory, want 3 shares and so-pin.json", len(files))
	}
	for _, f := range files {
		if st, _ := os.Stat(filepath.Join(out, f.Name())); st.Mode().Perm() != 0o600 {
			t.Fatalf("%s: mode %v", f.Name(), st.Mode())
		}
	}
	recData, err := os.ReadFile(filepath.Join(out, "so-pin.json"))
	if err != nil {
		t.Fatal(err)
	}
	rec, err := ceremony.ParseSOPINRecord(recData)
	if err != nil || rec.Threshold != 2 || rec.Total != 3 || rec.TokenLabel != label || rec.TokenSerial == "" {
		t.Fatalf("record: %+v %v", rec, err)
	}
	collect := func(officers ...int) *ceremony.Collector {
		c := ceremony.NewCollector(rec.ShareSet())
		for _, i := range officers {
			file, err := os.ReadFile(filepath.Join(out, fmt.Sprintf("so-pin-share-%d-o%d.age", i, i)))
			if err != nil {
				t.Fatal(err)
			}
			sh, err := ceremony.DecryptShare(file, ids[i-1])
			if err != nil {
				t.Fatal(err)
			}
			if _, err := c.Submit(sh.Officer, sh.Text()); err != nil {
				t.Fatal(err)
			}
		}
		return c
	}
	tok, err := hsm.Open(context.Background(), hsm.Config{ModulePath: hsmtest.ModulePath(), TokenLabel: label, PINFile: userPIN}, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	defer tok.Close()
	key, err := tok.GenerateKeyPair(context.Background(), hsm.KeySpec{Label: "custody/escrow/v1", Alg: hsm.P256, Usage: hsm.UsageDerive, Backup: true})
	if err != nil {
		t.Fatal(err)
	}
	sk, _, _ := note.GenerateKey(rand.Reader, "custody.test/log")
	signer, _ := note.NewSigner(sk)
	offs, err := ceremony.ParseOfficers(mustRead(t, filepath.Join(dir, "officers.json")), nil)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ceremony.Backup(context.Background(), tok, key.Label, collect(1), offs.List, 2, signer, time.Now()); !errors.Is(err, ceremony.ErrNotEnoughShares) {
		t.Fatalf("backup with one SO PIN share: %v", err)
	}
	if _, err := ceremony.Backup(context.Background(), tok, key.Label, collect(1, 3), offs.List, 2, signer, time.Now()); err != nil {
		t.Fatalf("backup with two officers' SO PIN shares: %v", err)
	}
	// The PIN is on no disk: not in the share directory, the configuration
	// directory or the token store.
	var parts [][]byte
	for _, i := range []int{2, 3} {
		sh, err := ceremony.DecryptShare(mustRead(t, filepath.Join(out, fmt.Sprintf("so-pin-share-%d-o%d.age", i, i))), ids[i-1])
		if err != nil {
			t.Fatal(err)
		}
		parts = append(parts, append([]byte{byte(sh.Index)}, sh.Value...))
	}
	raw, err := shamir.Combine(parts)
	if err != nil {
		t.Fatal(err)
	}
	pin := ceremony.SOPINText(raw)
	for _, root := range []string{dir, filepath.Dir(os.Getenv("SOFTHSM2_CONF"))} {
		filepath.WalkDir(root, func(p string, e os.DirEntry, err error) error {
			if err == nil && e.Type().IsRegular() {
				if b, _ := os.ReadFile(p); bytes.Contains(b, pin) {
					t.Errorf("%s holds the SO PIN", p)
				}
			}
			return nil
		})
	}
	// The daemon refuses an SO PIN file in its configuration.
	d := setup(t)
	withCeremony(t, d, map[string]any{"officers_file": "officers.json", "output_dir": "ceremonies", "so_pin_file": "so.pin"})
	if out, err := exec.Command(filepath.Join(binDir, "custodyd"), "run", "--config", d.config).CombinedOutput(); err == nil || !strings.Contains(string(out), "so_pin_file: no longer accepted") {
		t.Fatalf("so_pin_file accepted: %v\n%s", err, out)
	}
}

func mustRead(t *testing.T, p string) []byte {
	t.Helper()
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
