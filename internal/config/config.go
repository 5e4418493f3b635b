// Package config loads and validates custodyd's configuration file.
//
// The file is JSON with unknown fields rejected. Every field has a default
// (Default), chosen so that `custodyd run` started from the repository root
// works on the first-run SoftHSM token that scripts/first-run.sh creates.
// Relative paths in a file are resolved against the file's directory;
// relative paths in the defaults against the working directory.
//
// Validation errors name the field by its JSON path, so an operator can fix
// the file without reading code.
//
// Durations (here and in the access_log and vault sections) are
// duration.Duration: Go duration strings ("30s", "2160h"). A value that is
// not one is refused when the file is decoded, naming the field and the
// value; Validate checks each field's range.
package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
	"custody/internal/compliance"
	"custody/internal/config/duration"
	"custody/internal/orders"
	"custody/internal/safefile"
)

// MaxFileSize bounds the configuration file.
const MaxFileSize = 1 << 20

// Config is custodyd's whole configuration.
type Config struct {
	PKCS11 PKCS11 `json:"pkcs11"`
	Socket Socket `json:"socket"`
	// PolicyFile is the access policy (see docs/policy.md).
	PolicyFile string  `json:"policy_file"`
	Limits     Limits  `json:"limits"`
	Metrics    Metrics `json:"metrics"`
	// AccessLog is the tamper-evident access log (docs/auditlog.md).
	AccessLog auditlog.Config `json:"access_log"`
	// Vault holds the court orders that gate audit decrypts (docs/orders.md).
	// Without it, audit decrypts are refused with vault_unavailable.
	Vault *orders.Config `json:"vault,omitempty"`
	// ParticipantStatus tunes the participant status checks
	// (docs/compliance.md), which are on whenever Vault is configured;
	// without a vault section they are off and this section is refused.
	ParticipantStatus *compliance.Config `json:"participant_status,omitempty"`
	// Keys says when keys are due for rotation.
	Keys Keys `json:"keys"`
	// Ceremony configures the escrow key ceremonies (docs/ceremonies.md).
	Ceremony Ceremony `json:"ceremony"`
	// ShutdownTimeout is how long SIGTERM waits for requests in progress
	// before custodyd exits anyway; a Go duration ("30s").
	ShutdownTimeout duration.Duration `json:"shutdown_timeout"`
}

// PKCS11 says which token holds the keys.
type PKCS11 struct {
	Module     string `json:"module"`      // path of the PKCS#11 library
	TokenLabel string `json:"token_label"` // token to use
	PINFile    string `json:"pin_file"`    // user PIN; mode 0400 or 0600, owned by root or the daemon's user (safefile)
	// SoftHSMConf, when set and SOFTHSM2_CONF is not already in the
	// environment, is exported as SOFTHSM2_CONF before the module loads.
	SoftHSMConf string `json:"softhsm_conf,omitempty"`
	// Sessions is the session pool size; 0 sizes it to the token and the CPUs.
	Sessions int `json:"sessions"`
	// RecycleAfter: re-initialize the PKCS#11 module after this many session
	// objects, to free what SoftHSM 2.6 keeps of destroyed ones (hsm doc,
	// "Memory"). 0 = automatic (on for SoftHSM only), -1 = never.
	RecycleAfter int `json:"recycle_after"`
	// DEKCache keeps recently opened envelopes' DEKs (and field keys) on the
	// token as session objects, so that opening one again skips the key
	// chain (hsm doc, "DEK handle cache"). Every policy check runs on every
	// open, hit or not.
	DEKCache DEKCache `json:"dek_cache"`
	// KeyRecheck: private keys are used through session copies of them
	// (on the token, as sensitive; hsm doc, "Private-key copies"), and the
	// token object is looked at again once per KeyRecheck, which bounds
	// how long a key destroyed by another daemon of a fleet can still be
	// used here. "0s" makes no copies: every use reads the token object.
	KeyRecheck duration.Duration `json:"key_recheck"`
}

// DEKCache bounds the DEK handle cache. Entries 0 turns it off.
type DEKCache struct {
	Entries int               `json:"entries"` // stanzas kept, least recently used evicted first
	MaxAge  duration.Duration `json:"max_age"` // an entry is destroyed this long after its unwrap
	// Recheck is how long a hit may rely on the last check that its private
	// key is still on the token ("0s": check on every hit); it bounds how
	// long a key destroyed by another daemon of a fleet can still open from
	// this daemon's cache.
	Recheck duration.Duration `json:"recheck"`
}

// Socket is where the API listens.
type Socket struct {
	Path string `json:"path"`
	// Mode is the socket file's permission bits, as an octal string ("0660").
	// Who may connect is decided by this mode and the policy together.
	Mode string `json:"mode"`
}

// Keys is the key lifecycle policy.
type Keys struct {
	// RotateAfter is how old an active participant key may grow before the
	// daemon rotates it (a Go duration; "2160h" = 90 days).
	RotateAfter duration.Duration `json:"rotate_after"`
	// RotationCheck is how often the daemon looks for keys due ("1h").
	RotationCheck duration.Duration `json:"rotation_check"`
	// RefreshInterval is how often the daemon rereads the token for key
	// versions other daemons sharing it created or retired (a fleet:
	// docs/fleet.md); "10s" when left out. A lookup that misses rereads it
	// at once anyway (bounded).
	RefreshInterval duration.Duration `json:"refresh_interval,omitempty"`
}

// Ceremony configures the escrow key ceremonies. Without an officers file
// the ceremony routes answer ceremony_unavailable.
type Ceremony struct {
	// OfficersFile lists the security officers (ceremony.ParseOfficers);
	// like the policy file it must be owned by root or the daemon's user
	// and not group- or world-writable (safefile).
	OfficersFile string `json:"officers_file"`
	// SOPINShares is the public record of this token's SO PIN shares, which
	// `custodyd token init --officers` writes (so-pin.json). The daemon
	// holds no SO PIN: a backup needs officers to submit their SO PIN
	// shares. Without it backups are refused (so_pin_unavailable).
	SOPINShares string `json:"so_pin_shares,omitempty"`
	// TrustedBackupSigners pins the daemons whose backup manifests a restore
	// accepts: their access-log verifier keys (the text of their log.pub).
	// Empty: every restore is refused.
	TrustedBackupSigners []string `json:"trusted_backup_signers,omitempty"`
	// MinApprovals raises the least number of approvals (besides the
	// requester) per kind: genesis, backup, restore, rotate, retire.
	// Defaults 2, 2, 2, 1, 2; restore and retire are never below 2.
	MinApprovals map[string]int `json:"min_approvals,omitempty"`
	// PendingPerOfficer bounds the requests one officer may have pending
	// (0 = 4).
	PendingPerOfficer int `json:"pending_per_officer,omitempty"`
	// OutputDir receives transcripts, backup manifests and share files
	// (mode 0600 in 0700 directories; officers fetch theirs over the socket).
	OutputDir string `json:"output_dir"`
	// AutoGenesis makes the daemon run genesis by itself at start when the
	// token has not had one (creating the escrow and signing keys without a
	// ceremony). Demo only: false unless set; the first run's configuration
	// (scripts/first-run.sh) sets it, production runs `custodyctl ceremony genesis`.
	AutoGenesis *bool `json:"auto_genesis,omitempty"`
	// SOPINFile is no longer accepted (it let the daemon's user export the
	// escrow key); Validate says what replaces it.
	SOPINFile string `json:"so_pin_file,omitempty"`
}

// ceremonyKinds are the kinds MinApprovals takes, with their floors.
var ceremonyKinds = map[string]int{"genesis": 1, "backup": 2, "restore": 2, "rotate": 1, "retire": 2}

// AutoGenesisOn reports AutoGenesis with its default (false).
func (c Ceremony) AutoGenesisOn() bool { return c.AutoGenesis != nil && *c.AutoGenesis }

// Metrics is where Prometheus scrapes custodyd.
type Metrics struct {
	// Listen is "" (no metrics), a loopback TCP address ("127.0.0.1:9464",
	// "[::1]:9464"), or "unix:PATH" for a socket of mode 0660.
	Listen string `json:"listen"`
}

// Limits bound what one request may cost.
type Limits struct {
	MaxBodyBytes  int64 `json:"max_body_bytes"`  // request body size
	MaxBatchItems int   `json:"max_batch_items"` // items in one batch call
	// MaxInFlightPerCaller bounds the requests one Unix user may have in
	// progress at once; more are refused with rate_limited, so one client
	// cannot starve the HSM for the others.
	MaxInFlightPerCaller int               `json:"max_in_flight_per_caller"`
	RequestTimeout       duration.Duration `json:"request_timeout"` // whole request, including HSM waits; a Go duration ("60s")
	// ReadTimeout bounds the time a connection may take to send a
	// request's headers, from its first byte (or from accept); the body
	// and the answer are bounded by RequestTimeout. A Go duration ("10s").
	ReadTimeout duration.Duration `json:"read_timeout"`
	// IdleTimeout closes a kept-alive connection that sends no new request
	// for this long. A Go duration ("60s").
	IdleTimeout duration.Duration `json:"idle_timeout"`
	// MaxConnectionsPerCaller bounds the open connections of one Unix user;
	// one more is answered too_many_connections and closed.
	MaxConnectionsPerCaller int `json:"max_connections_per_caller"`
	// RefusalRate and RefusalBurst bound the refusals (4xx answers: denied,
	// bad requests, over a limit) one Unix user may cause: a token bucket refilled at
	// RefusalRate per second holding at most RefusalBurst. While it is
	// empty, that user's requests are refused at the door with
	// too_many_refusals.
	RefusalRate  int `json:"refusal_rate"`
	RefusalBurst int `json:"refusal_burst"`
	// RefusalWindow is how long identical refusals at the door (same uid,
	// route and code) are counted instead of recorded one by one: the
	// first is an entry, the rest one summary entry when the window
	// closes (docs/auditlog.md, "Coalesced refusals"). A Go duration ("1m").
	RefusalWindow duration.Duration `json:"refusal_window"`
}

func (l Limits) validate() error {
	switch {
	case l.MaxBodyBytes < 1024 || l.MaxBodyBytes > 256<<20:
		return errors.New("limits.max_body_bytes: must be 1 KiB to 256 MiB")
	case l.MaxBatchItems < 1 || l.MaxBatchItems > 100000:
		return errors.New("limits.max_batch_items: must be 1 to 100000")
	case l.MaxInFlightPerCaller < 1 || l.MaxInFlightPerCaller > 100000:
		return errors.New("limits.max_in_flight_per_caller: must be 1 to 100000")
	case l.MaxConnectionsPerCaller < 1 || l.MaxConnectionsPerCaller > 100000:
		return errors.New("limits.max_connections_per_caller: must be 1 to 100000")
	case l.MaxConnectionsPerCaller < l.MaxInFlightPerCaller:
		return errors.New("limits.max_connections_per_caller: must be at least limits.max_in_flight_per_caller")
	case l.RefusalRate < 1 || l.RefusalRate > 100000:
		return errors.New("limits.refusal_rate: must be 1 to 100000 refusals per second")
	case l.RefusalBurst < 1 || l.RefusalBurst > 1000000:
		return errors.New("limits.refusal_burst: must be 1 to 1000000")
	}
	if l.RequestTimeout.Std() < time.Second {
		return fmt.Errorf("limits.request_timeout: %q is not a duration of at least 1s (e.g. \"60s\")", l.RequestTimeout)
	}
	for _, f := range []struct {
		name string
		v    duration.Duration
	}{{"read_timeout", l.ReadTimeout}, {"idle_timeout", l.IdleTimeout}, {"refusal_window", l.RefusalWindow}} {
		if f.v.Std() < time.Second || f.v.Std() > time.Hour {
			return fmt.Errorf("limits.%s: %q is not a duration from 1s to 1h (e.g. \"10s\")", f.name, f.v)
		}
	}
	return nil
}

// Default returns the first-run configuration: the SoftHSM token under
// softhsm/, the socket under run/, and the example policy.
func Default() Config {
	return Config{
		PKCS11: PKCS11{
			Module:      "/usr/lib/softhsm/libsofthsm2.so",
			TokenLabel:  "custody",
			PINFile:     "softhsm/user.pin",
			SoftHSMConf: "softhsm/softhsm2.conf",
			DEKCache:    DEKCache{Entries: 4096, MaxAge: duration.Duration(time.Minute), Recheck: duration.Duration(time.Second)},
			KeyRecheck:  duration.Duration(time.Second),
		},
		Socket:          Socket{Path: "run/custodyd.sock", Mode: "0660"},
		PolicyFile:      "policies/example.json",
		ShutdownTimeout: duration.Duration(30 * time.Second),
		AccessLog:       defaultAccessLog(),
		Keys:            Keys{RotateAfter: duration.Duration(2160 * time.Hour), RotationCheck: duration.Duration(time.Hour)},
		Limits: Limits{
			MaxBodyBytes:            8 << 20,
			MaxBatchItems:           1000,
			MaxInFlightPerCaller:    32,
			RequestTimeout:          duration.Duration(60 * time.Second),
			ReadTimeout:             duration.Duration(10 * time.Second),
			IdleTimeout:             duration.Duration(60 * time.Second),
			MaxConnectionsPerCaller: 256,
			RefusalRate:             20,
			RefusalBurst:            200,
			RefusalWindow:           duration.Duration(time.Minute),
		},
	}
}

func defaultAccessLog() auditlog.Config {
	c := auditlog.DefaultConfig()
	c.Dir = "run/log"
	return c
}

// Load reads the file at path over the defaults and validates the result.
// An empty path means the defaults alone.
func Load(path string) (Config, error) {
	c := Default()
	if path == "" {
		return c, c.Validate()
	}
	// The file pins order signers, backup signers and the officers file:
	// it gets the checks of every file the daemon trusts (safefile).
	data, err := safefile.Read(path, MaxFileSize)
	if errors.Is(err, safefile.ErrTooLarge) {
		return c, fmt.Errorf("config %s: larger than %d bytes", path, MaxFileSize)
	}
	if err != nil {
		return c, fmt.Errorf("config: %w", err)
	}
	if err := c.decode(data); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	var set Config // what the file itself names: only those paths are relative to it
	json.Unmarshal(data, &set)
	c.resolve(filepath.Dir(path), set)
	if err := c.Validate(); err != nil {
		return c, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

func (c *Config) decode(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(c); err != nil {
		var te *json.UnmarshalTypeError
		if errors.As(err, &te) && te.Type == duration.Type {
			return fmt.Errorf("%s: %s is not %s", te.Field, te.Value, duration.Want)
		}
		if errors.As(err, &te) {
			return fmt.Errorf("%s: want %s", te.Field, te.Type)
		}
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON object")
	}
	return nil
}

// resolve makes the relative paths the file set (those non-empty in set)
// relative to dir, the file's directory; defaults stay relative to the
// working directory.
func (c *Config) resolve(dir string, set Config) {
	abs := func(p string) string {
		if p == "" || filepath.IsAbs(p) {
			return p
		}
		return filepath.Join(dir, p)
	}
	if c.Vault != nil {
		c.Vault.ResolvePaths(abs)
	}
	if p, ok := strings.CutPrefix(set.Metrics.Listen, "unix:"); ok {
		c.Metrics.Listen = "unix:" + abs(p)
	}
	for _, f := range []struct{ dst, set *string }{
		{&c.PKCS11.PINFile, &set.PKCS11.PINFile},
		{&c.PKCS11.SoftHSMConf, &set.PKCS11.SoftHSMConf},
		{&c.Socket.Path, &set.Socket.Path},
		{&c.PolicyFile, &set.PolicyFile},
		{&c.AccessLog.Dir, &set.AccessLog.Dir},
		{&c.Ceremony.OfficersFile, &set.Ceremony.OfficersFile},
		{&c.Ceremony.SOPINShares, &set.Ceremony.SOPINShares},
		{&c.Ceremony.OutputDir, &set.Ceremony.OutputDir},
	} {
		if *f.set != "" {
			*f.dst = abs(*f.dst)
		}
	}
}

// StatusConfig is the participant_status section with its defaults, and
// whether status checks are on (a vault section, and not disabled).
func (c Config) StatusConfig() (compliance.Config, bool) {
	var sc compliance.Config
	if c.ParticipantStatus != nil {
		sc = *c.ParticipantStatus
	}
	if err := sc.Validate(); err != nil {
		return sc, false
	}
	return sc, c.Vault != nil && sc.On()
}

// SocketMode returns Socket.Mode as file permission bits.
func (c Config) SocketMode() os.FileMode {
	m, _ := strconv.ParseUint(c.Socket.Mode, 8, 32)
	return os.FileMode(m)
}

// Validate checks every field and names the first bad one.
func (c Config) Validate() error {
	switch {
	case c.PKCS11.Module == "":
		return errors.New("pkcs11.module: required")
	case c.PKCS11.TokenLabel == "" || len(c.PKCS11.TokenLabel) > 32:
		return errors.New("pkcs11.token_label: required, at most 32 bytes")
	case c.PKCS11.PINFile == "":
		return errors.New("pkcs11.pin_file: required")
	case c.PKCS11.Sessions < 0 || c.PKCS11.Sessions > 256:
		return errors.New("pkcs11.sessions: must be 0 (auto) to 256")
	case c.PKCS11.RecycleAfter < -1:
		return errors.New("pkcs11.recycle_after: must be -1 (never), 0 (automatic) or a count")
	case c.PKCS11.DEKCache.Entries < 0 || c.PKCS11.DEKCache.Entries > 1<<20:
		return errors.New("pkcs11.dek_cache.entries: must be 0 (off) to 1048576")
	case c.PKCS11.DEKCache.Entries > 0 && (c.PKCS11.DEKCache.MaxAge.Std() < time.Second || c.PKCS11.DEKCache.MaxAge.Std() > time.Hour):
		return fmt.Errorf("pkcs11.dek_cache.max_age: %q is not a duration from 1s to 1h (e.g. \"60s\")", c.PKCS11.DEKCache.MaxAge)
	case c.PKCS11.DEKCache.Entries > 0 && (c.PKCS11.DEKCache.Recheck.Std() < 0 || c.PKCS11.DEKCache.Recheck.Std() > c.PKCS11.DEKCache.MaxAge.Std()):
		return fmt.Errorf("pkcs11.dek_cache.recheck: %q is not a duration from 0s to max_age (e.g. \"1s\")", c.PKCS11.DEKCache.Recheck)
	case c.PKCS11.KeyRecheck.Std() < 0 || c.PKCS11.KeyRecheck.Std() > time.Hour:
		return fmt.Errorf("pkcs11.key_recheck: %q is not a duration from 0s (no key copies) to 1h (e.g. \"1s\")", c.PKCS11.KeyRecheck)
	case c.Socket.Path == "":
		return errors.New("socket.path: required")
	case len(c.Socket.Path) > 100:
		return errors.New("socket.path: longer than a Unix socket address allows (100 bytes); use a shorter path")
	case c.PolicyFile == "":
		return errors.New("policy_file: required")
	}
	if err := c.Limits.validate(); err != nil {
		return err
	}
	if c.ShutdownTimeout.Std() < 0 || c.ShutdownTimeout.Std() > time.Hour {
		return fmt.Errorf("shutdown_timeout: %q is not a duration from 0s to 1h (e.g. \"30s\")", c.ShutdownTimeout)
	}
	if err := c.Metrics.validate(); err != nil {
		return err
	}
	if c.Keys.RotateAfter.Std() < time.Hour {
		return fmt.Errorf("keys.rotate_after: %q is not a duration of at least 1h (e.g. \"2160h\" for 90 days)", c.Keys.RotateAfter)
	}
	if c.Keys.RotationCheck.Std() < time.Second {
		return fmt.Errorf("keys.rotation_check: %q is not a duration of at least 1s (e.g. \"1h\")", c.Keys.RotationCheck)
	}
	if r := c.Keys.RefreshInterval.Std(); r != 0 && r < 100*time.Millisecond {
		return fmt.Errorf("keys.refresh_interval: %q is not a duration of at least 100ms (e.g. \"10s\")", c.Keys.RefreshInterval)
	}
	if err := c.AccessLog.Validate(); err != nil {
		return err
	}
	if err := c.Ceremony.validate(); err != nil {
		return err
	}
	if c.Vault != nil {
		if err := c.Vault.Validate(); err != nil {
			return err
		}
	}
	if c.ParticipantStatus != nil {
		if c.Vault == nil {
			return errors.New("participant_status: needs a vault section (the records live in Vault); without one, status checks are off")
		}
		if err := c.ParticipantStatus.Validate(); err != nil {
			return err
		}
	}
	m, err := strconv.ParseUint(c.Socket.Mode, 8, 32)
	if err != nil || m > 0o777 || len(c.Socket.Mode) != 4 || c.Socket.Mode[0] != '0' {
		return fmt.Errorf("socket.mode: %q is not an octal mode such as \"0660\"", c.Socket.Mode)
	}
	if m&0o600 != 0o600 {
		return fmt.Errorf("socket.mode: %q must let the owner read and write", c.Socket.Mode)
	}
	return nil
}

func (c Ceremony) validate() error {
	switch {
	case c.SOPINFile != "":
		return errors.New("ceremony.so_pin_file: no longer accepted: an SO PIN beside the daemon lets its Unix user export the escrow key. " +
			"Initialise the token with `custodyd token init --officers FILE --so-pin-threshold M --out DIR`, hand each officer their SO PIN share, " +
			"and set ceremony.so_pin_shares to DIR/so-pin.json (docs/ceremonies.md)")
	case c.OfficersFile == "" && (c.SOPINShares != "" || c.OutputDir != "" || len(c.TrustedBackupSigners) > 0):
		return errors.New("ceremony.officers_file: required when so_pin_shares, output_dir or trusted_backup_signers is set")
	case c.OfficersFile != "" && c.OutputDir == "":
		return errors.New("ceremony.output_dir: required with ceremony.officers_file (transcripts are written there)")
	case c.PendingPerOfficer < 0 || c.PendingPerOfficer > 64:
		return errors.New("ceremony.pending_per_officer: must be 0 (default 4) to 64")
	}
	for i, k := range c.TrustedBackupSigners {
		if _, err := note.NewVerifier(strings.TrimSpace(k)); err != nil {
			return fmt.Errorf("ceremony.trusted_backup_signers[%d]: %q is not a note verifier key (the text of a daemon's log.pub): %v", i, k, err)
		}
	}
	for kind, n := range c.MinApprovals {
		floor, ok := ceremonyKinds[kind]
		switch {
		case !ok:
			return fmt.Errorf("ceremony.min_approvals: unknown kind %q (genesis, backup, restore, rotate, retire)", kind)
		case n < floor || n > 254:
			return fmt.Errorf("ceremony.min_approvals.%s: %d; must be %d to 254 (restore and retire never take fewer than 2 approvals)", kind, n, floor)
		}
	}
	return nil
}

func (m Metrics) validate() error {
	if m.Listen == "" || strings.HasPrefix(m.Listen, "unix:") && len(m.Listen) > len("unix:") {
		return nil
	}
	host, _, err := net.SplitHostPort(m.Listen)
	if err != nil {
		return fmt.Errorf("metrics.listen: %q is not host:port or unix:PATH", m.Listen)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		return fmt.Errorf("metrics.listen: %q is not a loopback address; metrics are served on 127.0.0.1, ::1 or a Unix socket only", m.Listen)
	}
	return nil
}
