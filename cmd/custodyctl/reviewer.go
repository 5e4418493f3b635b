package main

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"syscall"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/durable"
)

// The reviewer's pinned log keys. Whoever can rewrite a log directory can
// also replace its log.pub and re-sign every checkpoint, so the offline
// tools never verify with the directory's own key: they use a key the
// reviewer gave them (--key FILE, their own copy) or pinned earlier in
// their reviewer configuration, after comparing its fingerprint with the
// one the operators published out of band (the genesis ceremony prints the
// SHA-256 of the access-log key, custody/log/v1, in hex and in words).
//
// The reviewer configuration is $XDG_CONFIG_HOME/custody/reviewer.json
// (default ~/.config/custody/reviewer.json), written by `custodyctl log
// pin`:
//
//	{"version": 1, "log_keys": ["<origin>+<hash>+<base64 key>", …]}
//
// At most one key per origin. The file must be a regular file owned by the
// reviewer and writable by no one else, like the daemon's policy file.

// reviewerConfigVersion is the "version" of reviewer.json.
const reviewerConfigVersion = 1

// maxReviewerConfig bounds reviewer.json.
const maxReviewerConfig = 64 << 10

// errNotPinned: no key the reviewer pinned (or gave with --key) for the log.
var errNotPinned = errors.New("no pinned log key")

// errDirKey: --key names the log directory's own log.pub.
var errDirKey = errors.New("the log directory's own key proves nothing")

type reviewerConfig struct {
	Version int      `json:"version"`
	LogKeys []string `json:"log_keys"`
}

// reviewerConfigPath is where the reviewer's pinned keys live.
func reviewerConfigPath() (string, error) {
	dir, err := os.UserConfigDir()
	if err != nil {
		return "", fmt.Errorf("reviewer configuration: %w (set XDG_CONFIG_HOME or HOME)", err)
	}
	return filepath.Join(dir, "custody", "reviewer.json"), nil
}

// parseReviewerConfig parses reviewer.json strictly: version 1, no unknown
// member, no trailing data, every key a valid Ed25519 note verifier key,
// at most one key per origin.
func parseReviewerConfig(b []byte) (map[string]note.Verifier, []string, error) {
	if len(b) > maxReviewerConfig {
		return nil, nil, fmt.Errorf("reviewer configuration: %d bytes, at most %d", len(b), maxReviewerConfig)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var c reviewerConfig
	if err := dec.Decode(&c); err != nil {
		return nil, nil, fmt.Errorf("reviewer configuration: %w", err)
	}
	if dec.More() {
		return nil, nil, errors.New("reviewer configuration: trailing data after the JSON object")
	}
	if c.Version != reviewerConfigVersion {
		return nil, nil, fmt.Errorf("reviewer configuration: version %d, want %d", c.Version, reviewerConfigVersion)
	}
	keys := map[string]note.Verifier{}
	for i, k := range c.LogKeys {
		v, err := auditlog.ParseVerifierKey([]byte(k))
		if err != nil || strings.TrimSpace(k) != k {
			return nil, nil, fmt.Errorf("reviewer configuration: log_keys[%d] is not a note verifier key", i)
		}
		if _, dup := keys[v.Name()]; dup {
			return nil, nil, fmt.Errorf("reviewer configuration: log_keys[%d]: a second key for the log %q", i, v.Name())
		}
		keys[v.Name()] = v
	}
	return keys, c.LogKeys, nil
}

// loadReviewerConfig reads the reviewer's pinned keys; a missing file is
// no pins. The file must be a regular file of the caller's, not writable
// by group or others: a key someone else can pin is not the reviewer's.
func loadReviewerConfig() (string, map[string]note.Verifier, []string, error) {
	path, err := reviewerConfigPath()
	if err != nil {
		return "", nil, nil, err
	}
	f, err := os.OpenFile(path, os.O_RDONLY|syscall.O_NOFOLLOW, 0)
	if errors.Is(err, os.ErrNotExist) {
		return path, map[string]note.Verifier{}, nil, nil
	}
	if err != nil {
		return path, nil, nil, fmt.Errorf("reviewer configuration %s: %w", path, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return path, nil, nil, err
	}
	st, _ := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.Mode().IsRegular():
		return path, nil, nil, fmt.Errorf("reviewer configuration %s: not a regular file", path)
	case st == nil || int(st.Uid) != os.Getuid():
		return path, nil, nil, fmt.Errorf("reviewer configuration %s: owned by another user than you (uid %d)", path, os.Getuid())
	case fi.Mode().Perm()&0o022 != 0:
		return path, nil, nil, fmt.Errorf("reviewer configuration %s: mode %v lets others change it; chmod 600", path, fi.Mode().Perm())
	}
	b, err := io.ReadAll(io.LimitReader(f, maxReviewerConfig+1))
	if err != nil {
		return path, nil, nil, err
	}
	keys, list, err := parseReviewerConfig(b)
	if err != nil {
		return path, nil, nil, fmt.Errorf("%s: %w", path, err)
	}
	return path, keys, list, nil
}

// keyFingerprint is the SHA-256 of the Ed25519 public key in a note
// verifier key, hex and words: what the genesis ceremony prints for the
// access-log key.
func keyFingerprint(vkey string) (hex, words string, err error) {
	vkey = strings.TrimSpace(vkey)
	if _, err := note.NewVerifier(vkey); err != nil {
		return "", "", err
	}
	// <name>+<hex hash>+<base64>: the name has no '+', the base64 may.
	parts := strings.SplitN(vkey, "+", 3)
	if len(parts) != 3 {
		return "", "", fmt.Errorf("verifier key %q: bad key encoding", vkey)
	}
	raw, err := base64.StdEncoding.DecodeString(parts[2])
	if err != nil || len(raw) < 2 {
		return "", "", fmt.Errorf("verifier key %q: bad key encoding", vkey)
	}
	pub := raw[1:] // after the algorithm byte
	return ceremony.Fingerprint(pub), ceremony.FingerprintWords(pub), nil
}

// verifierKeyText is the verifier key string of v (note.Verifier does
// not give it back), found among list.
func verifierKeyText(v note.Verifier, list []string) string {
	for _, k := range list {
		if w, err := note.NewVerifier(k); err == nil && w.Name() == v.Name() && w.KeyHash() == v.KeyHash() {
			return k
		}
	}
	return ""
}

// reviewerVerifier is the key a reviewer's command checks a log with.
type reviewerVerifier struct {
	note.Verifier
	text   string // the verifier key string
	source string // where it came from: "--key FILE" or "pinned in PATH"
}

// reviewerKey returns the key to check dir's log with: keyFile (the
// reviewer's own copy) if given, else the key pinned for the log's origin
// (the name in dir's log.pub or checkpoint; any name when one key is
// pinned). Never dir's own log.pub: without a pinned key it fails with
// errNotPinned and a message saying how to pin one, with the fingerprint
// of the directory's key to compare out of band. what names the command.
func reviewerKey(what, keyFile, dir string) (*reviewerVerifier, error) {
	dirKey := filepath.Join(dir, auditlog.PublicKeyFile)
	if keyFile != "" {
		if a, err := os.Stat(keyFile); err == nil {
			if b, err := os.Stat(dirKey); err == nil && os.SameFile(a, b) {
				return nil, fmt.Errorf("%s: --key %s: %w against whoever could rewrite the directory; pass your own copy of the key, or pin one (custodyctl log pin)", what, keyFile, errDirKey)
			}
		}
		b, err := os.ReadFile(keyFile)
		if err != nil {
			return nil, fmt.Errorf("public key: %w", err)
		}
		v, err := auditlog.ParseVerifierKey(b)
		if err != nil {
			return nil, err
		}
		return &reviewerVerifier{v, strings.TrimSpace(string(b)), "--key " + keyFile}, nil
	}
	path, pinned, list, err := loadReviewerConfig()
	if err != nil {
		return nil, err
	}
	dirText, _ := os.ReadFile(dirKey)
	dirV, _ := auditlog.ParseVerifierKey(dirText)
	name := ""
	if dirV != nil {
		name = dirV.Name()
	} else if cp, err := os.ReadFile(filepath.Join(dir, auditlog.CheckpointFile)); err == nil {
		name, _, _ = strings.Cut(string(cp), "\n")
	}
	v, ok := pinned[name]
	if !ok && len(pinned) == 1 {
		for _, only := range pinned {
			v, ok = only, true
		}
	}
	if ok {
		return &reviewerVerifier{v, verifierKeyText(v, list), "pinned in " + path}, nil
	}
	return nil, notPinned(what, dir, path, name, strings.TrimSpace(string(dirText)))
}

// notPinned is the errNotPinned error with the way out: the directory's
// key and its fingerprint, to compare with the published one, and the
// command that pins it.
func notPinned(what, dir, path, name, dirKey string) error {
	var b strings.Builder
	fmt.Fprintf(&b, "%s: %v for the log %q in %s.\n", what, errNotPinned, name, path)
	b.WriteString("  The directory's own log.pub proves nothing against whoever could rewrite the directory.\n")
	if hex, words, err := keyFingerprint(dirKey); err == nil {
		fmt.Fprintf(&b, "  The directory's key:  %s\n    sha256 %s\n    words  %s\n", escapeText(dirKey), hex, words)
		b.WriteString("  Compare that fingerprint with the one the operators published (genesis prints the\n")
		b.WriteString("  custody/log/v1 key's sha256 and words), then pin the key:\n")
		fmt.Fprintf(&b, "    custodyctl log pin %s --fingerprint %s\n", dir, hex)
	} else {
		b.WriteString("  The directory has no valid log.pub. Get the log key from the operators and pin it:\n")
		b.WriteString("    custodyctl log pin KEYFILE --fingerprint SHA256\n")
	}
	b.WriteString("  or pass your own copy of the key with --key FILE.")
	return errorString{b.String(), errNotPinned}
}

// errorString is an error with its own message that matches a sentinel.
type errorString struct {
	msg string
	is  error
}

func (e errorString) Error() string { return e.msg }
func (e errorString) Unwrap() error { return e.is }

// logPin: custodyctl log pin (DIR | KEYFILE) --fingerprint HEX [--replace]
// pins the key after checking it has the fingerprint the reviewer got out
// of band.
func logPin(fs *flag.FlagSet, stdout io.Writer) func(pos []string) error {
	fp := fs.String("fingerprint", "", "the key's SHA-256 in `hex`, as the operators published it (genesis prints it)")
	replace := fs.Bool("replace", false, "replace a key pinned earlier for the same log origin")
	return func(pos []string) error {
		src := pos[0]
		if fi, err := os.Stat(src); err == nil && fi.IsDir() {
			src = filepath.Join(src, auditlog.PublicKeyFile)
		}
		raw, err := os.ReadFile(src)
		if err != nil {
			return err
		}
		vkey := strings.TrimSpace(string(raw))
		v, err := auditlog.ParseVerifierKey([]byte(vkey))
		if err != nil {
			return fmt.Errorf("%s: %w", src, err)
		}
		hex, words, err := keyFingerprint(vkey)
		if err != nil {
			return err
		}
		if *fp == "" {
			return usageError{msg: fmt.Sprintf("%s holds the key of the log %q\n  sha256 %s\n  words  %s\ncompare it with the fingerprint the operators published, then run again with --fingerprint %s", src, escapeText(v.Name()), hex, words, hex)}
		}
		if !strings.EqualFold(strings.TrimSpace(*fp), hex) {
			return fmt.Errorf("%s: the key's fingerprint is %s, not %s: not pinned (the key is not the one the operators published)", src, hex, *fp)
		}
		path, pinned, list, err := loadReviewerConfig()
		if err != nil {
			return err
		}
		if old, ok := pinned[v.Name()]; ok {
			if old.KeyHash() == v.KeyHash() && verifierKeyText(old, list) == vkey {
				fmt.Fprintf(stdout, "already pinned: the log %q, sha256 %s (%s)\n", v.Name(), hex, path)
				return nil
			}
			if !*replace {
				return fmt.Errorf("another key is pinned for the log %q in %s; give --replace to replace it", v.Name(), path)
			}
			list = removeKey(list, verifierKeyText(old, list))
		}
		list = append(list, vkey)
		if err := writeReviewerConfig(path, list); err != nil {
			return err
		}
		fmt.Fprintf(stdout, "pinned the key of the log %q, sha256 %s, in %s\n", v.Name(), hex, path)
		return nil
	}

}

func removeKey(list []string, k string) []string {
	out := list[:0:0]
	for _, x := range list {
		if x != k {
			out = append(out, x)
		}
	}
	return out
}

// writeReviewerConfig writes reviewer.json durably: 0700 directory, 0600
// file, temp → fsync → rename → fsync directory.
func writeReviewerConfig(path string, keys []string) error {
	data, err := json.MarshalIndent(reviewerConfig{Version: reviewerConfigVersion, LogKeys: keys}, "", "  ")
	if err != nil {
		return err
	}
	data = append(data, '\n')
	if _, _, err := parseReviewerConfig(data); err != nil {
		return err // never write what would not load
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	return durable.Replace(path, data, 0o600)
}
