package config

import (
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"custody/internal/safefile"
)

func TestDefaultsValid(t *testing.T) {
	c, err := Load("")
	if err != nil {
		t.Fatal(err)
	}
	if c.SocketMode() != 0o660 || c.PKCS11.TokenLabel != "custody" || c.Limits.RequestTimeout.Std() != time.Minute {
		t.Errorf("defaults: %+v", c)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.json")
	os.WriteFile(path, []byte(`{"pkcs11":{"token_label":"t2","pin_file":"pins/user.pin"},
		"socket":{"path":"/run/custody/s.sock","mode":"0600"},"limits":{"request_timeout":"5s"}}`), 0o644)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.PKCS11.PINFile != filepath.Join(dir, "pins/user.pin") {
		t.Errorf("relative path not resolved against the file: %s", c.PKCS11.PINFile)
	}
	if c.Socket.Path != "/run/custody/s.sock" || c.SocketMode() != 0o600 || c.PKCS11.TokenLabel != "t2" {
		t.Errorf("loaded: %+v", c)
	}
	if c.PolicyFile != Default().PolicyFile || c.AccessLog.Dir != Default().AccessLog.Dir {
		t.Errorf("a default path was made relative to the file: %s %s", c.PolicyFile, c.AccessLog.Dir)
	}
	if c.PKCS11.Module != Default().PKCS11.Module || c.Limits.MaxBatchItems != Default().Limits.MaxBatchItems {
		t.Errorf("defaults not kept for absent fields: %+v", c)
	}
	if c.Limits.RequestTimeout.Std() != 5*time.Second {
		t.Errorf("timeout: %v", c.Limits.RequestTimeout)
	}
}

func TestLoadErrorsNameTheField(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct{ json, want string }{
		{`{"socket":{"mode":"777"}}`, "socket.mode"},
		{`{"socket":{"mode":"0066"}}`, "socket.mode"},
		{`{"socket":{"path":"` + strings.Repeat("a", 120) + `"}}`, "socket.path"},
		{`{"pkcs11":{"sessions":-1}}`, "pkcs11.sessions"},
		{`{"pkcs11":{"recycle_after":-2}}`, "pkcs11.recycle_after"},
		{`{"pkcs11":{"dek_cache":{"entries":-1}}}`, "pkcs11.dek_cache.entries"},
		{`{"pkcs11":{"dek_cache":{"entries":10,"max_age":"0s"}}}`, "pkcs11.dek_cache.max_age"},
		{`{"pkcs11":{"dek_cache":{"entries":10,"max_age":"10s","recheck":"20s"}}}`, "pkcs11.dek_cache.recheck"},
		{`{"pkcs11":{"key_recheck":"-1s"}}`, "pkcs11.key_recheck"},
		{`{"pkcs11":{"key_recheck":"2h"}}`, "pkcs11.key_recheck"},
		{`{"pkcs11":{"token_label":""}}`, "pkcs11.token_label"},
		{`{"pkcs11":{"sessions":"2"}}`, "pkcs11.sessions"},
		{`{"limits":{"request_timeout":"soon"}}`, "request_timeout"},
		{`{"limits":{"max_body_bytes":10}}`, "limits.max_body_bytes"},
		{`{"limits":{"max_batch_items":0}}`, "limits.max_batch_items"},
		{`{"policy_file":""}`, "policy_file"},
		{`{"metrics":{"listen":"0.0.0.0:9464"}}`, "metrics.listen"},
		{`{"metrics":{"listen":"localhost"}}`, "metrics.listen"},
		{`{"metrics":{"listen":"unix:"}}`, "metrics.listen"},
		{`{"shutdown_timeout":"2h"}`, "shutdown_timeout"},
		{`{"keys":{"rotate_after":"10m"}}`, "keys.rotate_after"},
		{`{"keys":{"rotation_check":"soon"}}`, "keys.rotation_check"},
		{`{"limits":{"max_in_flight_per_caller":0}}`, "limits.max_in_flight_per_caller"},
		{`{"limits":{"read_timeout":"0s"}}`, "limits.read_timeout"},
		{`{"limits":{"read_timeout":"soon"}}`, "limits.read_timeout"},
		{`{"limits":{"idle_timeout":"2h"}}`, "limits.idle_timeout"},
		{`{"limits":{"refusal_window":"500ms"}}`, "limits.refusal_window"},
		{`{"limits":{"max_connections_per_caller":0}}`, "limits.max_connections_per_caller"},
		{`{"limits":{"max_connections_per_caller":8,"max_in_flight_per_caller":16}}`, "limits.max_connections_per_caller"},
		{`{"limits":{"refusal_rate":0}}`, "limits.refusal_rate"},
		{`{"limits":{"refusal_burst":-1}}`, "limits.refusal_burst"},
		// Durations: what is not a Go duration string is refused when
		// decoding, naming the field and the value; the range per field.
		{`{"limits":{"request_timeout":30}}`, `limits.request_timeout: 30 is not a Go duration`},
		{`{"limits":{"idle_timeout":""}}`, `limits.idle_timeout: "" is not a Go duration`},
		{`{"keys":{"rotate_after":"1x"}}`, `keys.rotate_after: "1x" is not a Go duration`},
		{`{"keys":{"rotation_check":"-1h"}}`, "keys.rotation_check"},
		{`{"shutdown_timeout":"-1s"}`, "shutdown_timeout"},
		{`{"limits":{"refusal_window":"-1m"}}`, "limits.refusal_window"},
		{`{"access_log":{"checkpoint_interval":"soon"}}`, `access_log.checkpoint_interval: "soon" is not a Go duration`},
		{`{"access_log":{"checkpoint_interval":"5ms"}}`, "access_log.checkpoint_interval"},
		{`{"vault":{"timeout":"2"}}`, `vault.timeout: "2" is not a Go duration`},
		{`{"sokcet":{}}`, `unknown field "sokcet"`},
		{`{} {}`, "trailing data"},
		{`[`, "unexpected EOF"},
	} {
		path := filepath.Join(dir, "c.json")
		os.WriteFile(path, []byte(tc.json), 0o644)
		_, err := Load(path)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: got %v, want an error naming %q", tc.json, err, tc.want)
		}
	}
	if _, err := Load(filepath.Join(dir, "missing.json")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
}

// TestDurationsRoundTrip: `custodyd config check` prints durations as Go
// duration strings, and what it prints loads back to the same configuration.
func TestDurationsRoundTrip(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "c.json")
	os.WriteFile(path, []byte(`{"shutdown_timeout":"90s","keys":{"rotate_after":"720h"},"limits":{"refusal_window":"1500ms"},
		"access_log":{"checkpoint_interval":"250ms"}}`), 0o644)
	c, err := Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if c.ShutdownTimeout.Std() != 90*time.Second || c.Keys.RotateAfter.Std() != 720*time.Hour || c.Limits.RefusalWindow.Std() != 1500*time.Millisecond ||
		c.AccessLog.CheckpointInterval.Std() != 250*time.Millisecond || c.Keys.RotationCheck.Std() != time.Hour {
		t.Fatalf("loaded: %+v", c)
	}
	out, err := json.MarshalIndent(c, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"shutdown_timeout": "1m30s"`, `"rotate_after": "720h"`, `"rotation_check": "1h"`, `"request_timeout": "1m"`,
		`"read_timeout": "10s"`, `"refusal_window": "1.5s"`, `"checkpoint_interval": "250ms"`} {
		if !strings.Contains(string(out), want) {
			t.Errorf("config check output lacks %s:\n%s", want, out)
		}
	}
	back := Default()
	if err := back.decode(out); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, c) {
		t.Errorf("printed configuration loads back as\n%+v\nnot\n%+v", back, c)
	}
}

// FuzzDecode: any input either fails to load or yields a configuration that
// validates; nothing panics.
func FuzzDecode(f *testing.F) {
	for _, s := range []string{
		`{}`,
		`{"pkcs11":{"module":"/usr/lib/softhsm/libsofthsm2.so","token_label":"custody","pin_file":"p","sessions":4,"recycle_after":-1},"socket":{"path":"s.sock","mode":"0660"},"policy_file":"p.json","limits":{"max_body_bytes":4096,"max_batch_items":10,"request_timeout":"2s"}}`,
		`{"socket":{"mode":"0777"}}`,
		`{"limits":{"request_timeout":"1h"}}`,
		`{"limits":{"read_timeout":"1x"},"keys":{"rotate_after":"2160h"}}`,
		`{"shutdown_timeout":30,"access_log":{"checkpoint_interval":"-1s"}}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		c := Default()
		if err := c.decode(data); err != nil {
			return
		}
		if err := c.Validate(); err != nil {
			return
		}
		if c.SocketMode()&0o600 != 0o600 {
			t.Fatalf("validated a socket mode without owner rw: %v", c.SocketMode())
		}
	})
}

func TestMetricsListen(t *testing.T) {
	for _, ok := range []string{"", "127.0.0.1:9464", "[::1]:0", "127.0.0.5:1", "unix:/run/custodyd/metrics.sock"} {
		c := Default()
		c.Metrics.Listen = ok
		if err := c.Validate(); err != nil {
			t.Errorf("%q: %v", ok, err)
		}
	}
}

// TestLoadRefusesUnsafeFile: the configuration pins order signers, backup
// signers and the officers file, so a file that others can write, or that
// another user owns, is refused like the policy file.
func TestLoadRefusesUnsafeFile(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("needs root to give the file another owner (make test runs as root)")
	}
	dir := t.TempDir()
	p := filepath.Join(dir, "custodyd.json")
	if err := os.WriteFile(p, []byte(`{}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); err != nil {
		t.Fatalf("a root-owned 0644 file: %v", err)
	}
	os.Chmod(p, 0o666)
	if _, err := Load(p); !errors.Is(err, safefile.ErrUnsafe) {
		t.Fatalf("a world-writable file: %v, want safefile.ErrUnsafe", err)
	}
	os.Chmod(p, 0o644)
	if err := os.Chown(p, 4242, 4242); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(p); !errors.Is(err, safefile.ErrUnsafe) {
		t.Fatalf("a file owned by uid 4242: %v, want safefile.ErrUnsafe", err)
	}
}
