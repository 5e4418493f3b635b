package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"custody/internal/auditlog"
)

// A fleet's logs (docs/fleet.md): one access log per daemon, each signed by
// its own key. The reviewer names them as several DIRs, each checked with
// the key pinned for its log, or with a fleet manifest (--fleet FILE) that
// lists each log's directory and key.

// fleetManifest is the file scripts/fleet.sh writes as DIR/fleet.json:
//
//	{"version": 1, "logs": [
//	  {"name": "custodyd-1", "dir": "custodyd-1/log", "key": "custodyd-1/access-log+…"}]}
//
// name labels the log's answer lines (unique, printable, at most 64
// bytes); dir is the log directory, relative to the manifest's own
// directory unless absolute; key, if present, is the log's note verifier
// key, used as --key would be; without it the key pinned for the log is
// used.
type fleetManifest struct {
	Version int                `json:"version"`
	Logs    []fleetManifestLog `json:"logs"`
}

type fleetManifestLog struct {
	Name string `json:"name"`
	Dir  string `json:"dir"`
	Key  string `json:"key,omitempty"`
}

// Manifest bounds.
const (
	maxManifestBytes = 1 << 20
	maxFleetLogs     = 64
	maxLogNameBytes  = 64
)

var errManifest = errors.New("fleet manifest")

// parseFleetManifest parses a manifest strictly: unknown fields, a version
// other than 1, no logs or more than maxFleetLogs, an empty, duplicate or
// unprintable name, an empty dir, a key that is not a verifier key, or
// trailing data are errors (wrapping errManifest).
func parseFleetManifest(b []byte) (*fleetManifest, error) {
	if len(b) > maxManifestBytes {
		return nil, fmt.Errorf("%w: larger than %d bytes", errManifest, maxManifestBytes)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var m fleetManifest
	if err := dec.Decode(&m); err != nil {
		return nil, fmt.Errorf("%w: %v", errManifest, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return nil, fmt.Errorf("%w: data after the manifest object", errManifest)
	}
	if m.Version != 1 {
		return nil, fmt.Errorf("%w: version %d, want 1", errManifest, m.Version)
	}
	if len(m.Logs) == 0 || len(m.Logs) > maxFleetLogs {
		return nil, fmt.Errorf("%w: %d logs, want 1..%d", errManifest, len(m.Logs), maxFleetLogs)
	}
	seen := map[string]bool{}
	for i, l := range m.Logs {
		switch {
		case l.Name == "" || len(l.Name) > maxLogNameBytes || escapeText(l.Name) != l.Name || strings.ContainsAny(l.Name, " \t"):
			return nil, fmt.Errorf("%w: logs[%d].name %q: 1..%d printable bytes without spaces", errManifest, i, escapeText(l.Name), maxLogNameBytes)
		case seen[l.Name]:
			return nil, fmt.Errorf("%w: logs[%d].name %q twice", errManifest, i, l.Name)
		case l.Dir == "" || strings.ContainsRune(l.Dir, 0):
			return nil, fmt.Errorf("%w: logs[%d] (%s): no dir", errManifest, i, l.Name)
		}
		if l.Key != "" {
			if _, err := auditlog.ParseVerifierKey([]byte(l.Key)); err != nil {
				return nil, fmt.Errorf("%w: logs[%d] (%s).key: %v", errManifest, i, l.Name, err)
			}
		}
		seen[l.Name] = true
	}
	return &m, nil
}

// logSource is one log a reviewer's command reads: its label in answers,
// its directory and the key it is verified with.
type logSource struct {
	name, dir string
	key       *reviewerVerifier
}

// logSources resolves the logs of a fleet command: each of dirs with the
// key pinned for its log, then each log of the manifest file (if not "")
// with its key, or the pinned one. Names: the manifest's, else the log's
// name (its key's), else the directory; they must differ.
func logSources(what string, dirs []string, manifest string) ([]logSource, error) {
	var out []logSource
	for _, d := range dirs {
		v, err := reviewerKey(what, "", d)
		if err != nil {
			return nil, err
		}
		out = append(out, logSource{name: v.Name(), dir: d, key: v})
	}
	if manifest != "" {
		b, err := os.ReadFile(manifest)
		if err != nil {
			return nil, err
		}
		m, err := parseFleetManifest(b)
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", what, manifest, err)
		}
		base := filepath.Dir(manifest)
		for _, l := range m.Logs {
			dir := l.Dir
			if !filepath.IsAbs(dir) {
				dir = filepath.Join(base, dir)
			}
			if inside(manifest, dir) {
				return nil, fmt.Errorf("%s: %s is inside the log directory %s it lists: %w; keep the manifest outside the logs", what, manifest, dir, errDirKey)
			}
			src := logSource{name: l.Name, dir: dir}
			if l.Key != "" {
				v, _ := auditlog.ParseVerifierKey([]byte(l.Key)) // checked by parseFleetManifest
				src.key = &reviewerVerifier{v, strings.TrimSpace(l.Key), "fleet manifest " + manifest}
			} else if src.key, err = reviewerKey(what, "", dir); err != nil {
				return nil, err
			}
			out = append(out, src)
		}
	}
	seen := map[string]bool{}
	for i := range out {
		if seen[out[i].name] {
			out[i].name = out[i].dir
		}
		if seen[out[i].name] {
			return nil, usageError{msg: fmt.Sprintf("%s: the log %s is named twice", what, escapeText(out[i].name))}
		}
		seen[out[i].name] = true
	}
	return out, nil
}

// inside reports whether file is in directory dir (or below it), symbolic
// links resolved where they exist.
func inside(file, dir string) bool {
	real := func(p string) (string, error) {
		if r, err := filepath.EvalSymlinks(p); err == nil {
			return r, nil
		}
		return filepath.Abs(p)
	}
	f, err1 := real(file)
	d, err2 := real(dir)
	if err1 != nil || err2 != nil {
		return false
	}
	rel, err := filepath.Rel(d, f)
	return err == nil && rel != ".." && !strings.HasPrefix(rel, ".."+string(filepath.Separator))
}

// verifySource verifies src's log with its key (the daemon's replaced
// log.pub counted as a problem, as log verify does).
func verifySource(src logSource, allowUnsignedTail bool) (*auditlog.VerifyResult, error) {
	res, err := auditlog.Verify(src.dir, auditlog.VerifyOptions{Verifier: src.key, AllowUnsignedTail: allowUnsignedTail})
	if err != nil {
		return nil, err
	}
	if dk := dirKeyMismatch(src.dir, src.key); dk != "" {
		res.OK = false
		res.Problems = append(res.Problems, auditlog.Problem{Index: res.TrustedUpTo, Kind: "key_replaced", Detail: dk})
	}
	return res, nil
}

// fleetEntry is one matching entry of a fleet query: the log it is in,
// its index there, the entry.
type fleetEntry struct {
	log   string
	index int64
	e     auditlog.Entry
}

// queryFleet verifies every log of srcs and, only if all verify, returns
// the entries of all that match, in time order (equal times: in srcs
// order, then log order). A log that does not verify fails the query
// before any entry is returned: a fleet-wide answer is only as good as
// its worst log.
func queryFleet(srcs []logSource, allowUnsignedTail bool, match func(auditlog.Entry) bool) ([]fleetEntry, error) {
	var failed []string
	for _, s := range srcs {
		res, err := verifySource(s, allowUnsignedTail)
		switch {
		case err != nil:
			failed = append(failed, fmt.Sprintf("%s (%s): %v", s.name, s.dir, err))
		case !res.OK:
			failed = append(failed, fmt.Sprintf("%s (%s): does not verify from entry %d", s.name, s.dir, res.TrustedUpTo))
		}
	}
	if len(failed) > 0 {
		return nil, fmt.Errorf("%d of %d logs failed verification, no answer given (run custodyctl log verify on them): %s", len(failed), len(srcs), escapeText(strings.Join(failed, "; ")))
	}
	var out []fleetEntry
	for _, s := range srcs {
		err := auditlog.ReadEntries(s.dir, func(i int64, e auditlog.Entry) error {
			if match(e) {
				out = append(out, fleetEntry{s.name, i, e})
			}
			return nil
		})
		if err != nil {
			return nil, fmt.Errorf("%s (%s): %w", escapeText(s.name), escapeText(s.dir), err)
		}
	}
	slices.SortStableFunc(out, func(a, b fleetEntry) int { return a.e.Time.Compare(b.e.Time) })
	return out, nil
}
