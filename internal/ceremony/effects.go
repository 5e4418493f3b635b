package ceremony

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"strconv"
	"strings"

	"custody/internal/device"
	"custody/internal/keys"
)

// What officers approve. A request's params are its whole meaning: the
// daemon computes them from what the requester chose (an ask) and from the
// token and the key registry as they are, and they go into the canonical
// text whose SHA-256 the approvers sign off. Every kind names the token and
// its exact effect in words; every kind that touches a key names it by
// label and fingerprint (hex and words). Just before a request runs, the
// params are computed again from the same ask: if the token changed in
// between (another rotation, a retired version, another key under the
// label), the request is refused as stale instead of doing something the
// officers did not read.

// ask is what a requester chose; everything else in a request's params is
// derived.
type ask struct {
	kind     string
	m, n     int
	label    string // backup: the escrow key label ("" = the active one)
	version  uint32 // retire
	count    uint64 // retire: envelopes the last rewrap run moved
	manifest *Manifest
	signer   string // restore: the manifest's verified signer
	digest   string // restore: SHA-256 of the manifest file
}

// parseAsk checks a request body's kind-specific inputs and returns the ask.
// Unknown params are refused: the daemon, not the requester, writes what
// the officers read.
func (s *Service) parseAsk(in Input) (ask, error) {
	a := ask{kind: in.Kind, m: in.M, n: in.N}
	allowed := map[string]bool{}
	switch in.Kind {
	case KindGenesis, KindRotate:
	case KindBackup:
		allowed["key_label"] = true
		a.label = in.Params["key_label"]
	case KindRetire:
		allowed["version"], allowed["rewrapped_count"] = true, true
	case KindRestore:
	default:
		return a, badInput("kind: %q is not genesis, backup, restore, rotate or retire", in.Kind)
	}
	for k := range in.Params {
		if !allowed[k] {
			return a, badInput("param %s: a %s request takes no such param; the daemon writes what the officers approve (custodyctl ceremony request --help)", k, in.Kind)
		}
	}
	if in.Kind != KindBackup && in.N != 0 {
		return a, badInput("n: only for backup requests (a restore's manifest says)")
	}
	if in.Kind != KindRestore && in.Manifest != "" {
		return a, badInput("manifest: only for restore requests")
	}
	if in.Kind == KindRetire {
		n, err := strconv.ParseUint(in.Params["version"], 10, 32)
		if err != nil || n == 0 {
			return a, badInput("param version: %q is not an escrow key version (see custodyctl ceremony status)", in.Params["version"])
		}
		count, err := strconv.ParseUint(in.Params["rewrapped_count"], 10, 63)
		if err != nil {
			return a, inputErrorf(ErrRetireUnconfirmed, "retiring destroys the escrow key version for good, and with it every audit decrypt of an envelope not rewrapped: give --param rewrapped_count=N, the count of your last rewrap run")
		}
		a.version, a.count = uint32(n), count
	}
	if in.Kind == KindBackup && a.n == 0 {
		a.n = len(s.Officers().List)
	}
	if in.Kind == KindRestore {
		m, signer, err := OpenManifest([]byte(in.Manifest), s.trusted)
		if err != nil {
			return a, err
		}
		a.manifest, a.signer, a.digest = m, signer, sha256Hex([]byte(in.Manifest))
	}
	return a, nil
}

// params computes what the officers approve for a, from the token and the
// registry now. It refuses what must not run: a backup or restore of
// anything but an escrow key, a restore onto a label that exists or was
// retired, retiring the active version.
func (s *Service) params(ctx context.Context, a ask) (map[string]string, error) {
	label, serial := s.token()
	token := fmt.Sprintf("%s (serial %s)", tokenField(label), tokenField(serial))
	p := map[string]string{"token": token}
	keyParams := func(label string, public []byte) {
		p["key_label"], p["key_sha256"], p["key_words"] = label, Fingerprint(public), FingerprintWords(public)
	}
	switch a.kind {
	case KindGenesis:
		p["effect"] = "creates on token " + token + " the escrow key custody/escrow/v1, the envelope signing key and the access-log key, each unless it exists; the transcript names their fingerprints"
	case KindBackup:
		if s.sopin == nil {
			return nil, fmt.Errorf("%w: a backup logs the security officer in, and the SO PIN of this token was not split among the officers; initialise the token with `custodyd token init --officers FILE` and set so_pin_shares", ErrNoSOPIN)
		}
		officers := len(s.Officers().List)
		if a.m < 2 || a.n < a.m || a.n > officers {
			return nil, badInput("n: %d shares with threshold m %d; want 2 <= m <= n <= %d officers", a.n, a.m, officers)
		}
		label := a.label
		if label == "" {
			esc, err := s.keys.Escrow()
			if err != nil {
				return nil, err
			}
			label = esc.Label
		}
		n, ok := keys.EscrowLabelVersion(label)
		if !ok {
			return nil, fmt.Errorf("%w: %q", ErrNotEscrowLabel, label)
		}
		v, err := s.keys.EscrowVersion(n)
		if err != nil {
			return nil, err
		}
		if _, err := s.dev.FindKey(ctx, label); err != nil {
			return nil, fmt.Errorf("backup of %q: %w", label, err)
		}
		var holders []string
		for _, o := range s.Officers().List[:a.n] {
			holders = append(holders, o.Name)
		}
		keyParams(label, v.Public)
		p["n"] = strconv.Itoa(a.n)
		p["share_holders"] = strings.Join(holders, " ")
		p["so_pin_set"] = s.sopin.SetID
		p["so_pin_shares_needed"] = strconv.Itoa(s.sopin.Threshold)
		p["effect"] = fmt.Sprintf("exports escrow key %s (sha256 %s) from token %s wrapped under a new KEK split %d-of-%d among %s; needs %d officers' SO PIN shares",
			label, short(p["key_sha256"]), token, a.m, a.n, strings.Join(holders, ", "), s.sopin.Threshold)
	case KindRestore:
		m := a.manifest
		if m.Threshold != a.m {
			return nil, badInput("m: %d, but the backup's threshold is %d", a.m, m.Threshold)
		}
		n, _ := keys.EscrowLabelVersion(m.KeyLabel) // OpenManifest checked the label
		if _, err := s.keys.EscrowVersion(n); err == nil {
			return nil, fmt.Errorf("%w: %s is already known to this daemon", device.ErrExists, m.KeyLabel)
		} else if errors.Is(err, keys.ErrDestroyed) {
			return nil, fmt.Errorf("%w: %s was retired on this token (its tombstone stays): a retired version is never restored", keys.ErrDestroyed, m.KeyLabel)
		}
		if _, err := s.dev.FindKey(ctx, m.KeyLabel); err == nil {
			return nil, fmt.Errorf("%w: %s", device.ErrExists, m.KeyLabel)
		} else if !errors.Is(err, device.ErrNotFound) {
			return nil, err
		}
		role := "as the active escrow key: new envelopes will be sealed to it"
		for _, v := range s.keys.EscrowVersions() {
			if v.Number > n {
				role = fmt.Sprintf("as decrypt-only (v%d is newer)", v.Number)
			}
		}
		keyParams(m.KeyLabel, m.Public)
		p["backup_id"], p["backup_created"] = m.BackupID, m.Created.UTC().Format("2006-01-02T15:04:05Z")
		p["backup_m"], p["backup_n"] = strconv.Itoa(m.Threshold), strconv.Itoa(m.Total)
		p["manifest_signer"], p["manifest_sha256"] = a.signer, a.digest
		p["effect"] = fmt.Sprintf("installs escrow key %s (sha256 %s, backup %s signed by %s) %s, on token %s",
			m.KeyLabel, short(p["key_sha256"]), m.BackupID, a.signer, role, token)
	case KindRotate:
		cur, err := s.keys.Escrow()
		if err != nil {
			return nil, err
		}
		next := fmt.Sprintf("custody/escrow/v%d", cur.Number+1)
		p["current_label"], p["current_sha256"] = cur.Label, cur.Fingerprint()
		p["effect"] = fmt.Sprintf("creates escrow key %s on token %s and makes it active for new envelopes; %s (sha256 %s) becomes decrypt-only", next, token, cur.Label, short(cur.Fingerprint()))
	case KindRetire:
		v, err := s.keys.EscrowVersion(a.version)
		if err != nil {
			return nil, err
		}
		if active, err := s.keys.Escrow(); err == nil && active.Number == v.Number {
			return nil, fmt.Errorf("%w: escrow v%d is active; rotate first", keys.ErrActiveVersion, a.version)
		}
		keyParams(v.Label, v.Public)
		p["version"], p["rewrapped_count"] = strconv.FormatUint(uint64(a.version), 10), strconv.FormatUint(a.count, 10)
		p["effect"] = fmt.Sprintf("destroys escrow key %s (sha256 %s) on token %s for good: an envelope whose only escrow stanza is for v%d can never be audit-decrypted again (the last rewrap run moved %d envelopes)",
			v.Label, short(p["key_sha256"]), token, a.version, a.count)
	}
	return p, nil
}

// stillApproved recomputes r's params from its ask: an error if the
// request could not be made now, ErrStale if it could but would say
// something else than what the officers approved.
func (s *Service) stillApproved(ctx context.Context, r Request, a ask) error {
	now, err := s.params(ctx, a)
	if err != nil {
		return err
	}
	if !maps.Equal(now, r.Params) {
		return fmt.Errorf("%w: request %s: the token or its keys changed since the officers approved; open a new request", ErrStale, r.ID)
	}
	return nil
}

func short(hex string) string {
	if len(hex) > 16 {
		return hex[:16] + "…"
	}
	return hex
}
