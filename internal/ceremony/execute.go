package ceremony

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"custody/internal/auditlog"
	"custody/internal/durable"
	"custody/internal/keys"
)

// Executing a request: Claim, then (after the caller recorded the claim)
// Run. Every output is written create-exclusive and fsynced (package
// durable) in OutputDir/<kind>-<id>, a 0700 directory.

// Claim is a request consumed for execution: it holds the approvals and
// the shares gathered. Exactly one of Run or Abort must follow.
type Claim struct {
	Request   Request
	Approvals []Approval
	ask       ask
	col       *Collector
}

// Abort clears the claim's shares; the request stays consumed.
func (c *Claim) Abort() {
	if c.col != nil {
		c.col.Abort()
	}
}

// Claim checks that request id of kind has its quorum and, for a backup or
// a restore, enough shares; that what the officers approved still
// describes the token (else ErrStale); then consumes it, so that no other
// Claim of it succeeds. Below the shares' threshold the request stays
// pending (more officers may still submit) and nothing is touched. Claim
// never touches the token's keys: the caller records the decision before
// calling Run.
func (s *Service) Claim(ctx context.Context, kind, id string) (*Claim, error) {
	r, aps, err := s.approvals.Get(id)
	if err != nil {
		return nil, err
	}
	if r.Kind != kind {
		return nil, fmt.Errorf("%w: no pending %s request %q", ErrUnknownRequest, kind, id)
	}
	col := s.collector(id)
	s.mu.Lock()
	a, ok := s.asks[id]
	s.mu.Unlock()
	if !ok {
		return nil, fmt.Errorf("%w: %q", ErrUnknownRequest, id)
	}
	if len(aps) >= r.Quorum && col != nil && col.Count() < col.Set().Threshold {
		return nil, fmt.Errorf("%w: %d of %d %ss submitted (each holder: custodyctl ceremony share submit %s FILE)", ErrNotEnoughShares, col.Count(), col.Set().Threshold, col.Set().Kind, id)
	}
	if len(aps) >= r.Quorum {
		if err := s.stillApproved(ctx, r, a); err != nil {
			return nil, err
		}
	}
	if r, aps, err = s.approvals.Consume(id, kind); err != nil {
		return nil, err
	}
	s.mu.Lock()
	delete(s.shares, id)
	delete(s.asks, id)
	s.mu.Unlock()
	return &Claim{Request: r, Approvals: aps, ask: a, col: col}, nil
}

// OutputFile is one file a ceremony wrote.
type OutputFile struct {
	Name   string // what Fetch takes
	Path   string // on the daemon's host, readable by its user only
	SHA256 string
	Holder string // the only officer who may fetch it (a share file); "" = any officer
}

// KeyFingerprint names a key a ceremony created or used.
type KeyFingerprint struct {
	Label   string
	SHA256  string
	Words   string
	Created bool
}

// Result is what an executed request did.
type Result struct {
	Fingerprints []KeyFingerprint
	Outputs      []OutputFile
	KCV          string
	BackupID     string
	Transcript   OutputFile // transcript.txt, signed by the access log's key
}

// Run executes claim c on the token, clears its shares whatever happens,
// and on success writes the signed transcript and makes the outputs
// fetchable. On failure the request stays consumed (officers open a new
// one) and the error is the device's, the registry's or the file system's.
// Call it once per claim, after the claim was recorded.
func (s *Service) Run(ctx context.Context, c *Claim) (*Result, error) {
	r := c.Request
	kind := r.Kind
	out := &Result{}
	label, serial := s.token()
	t := &Transcript{Kind: kind, RequestID: r.ID, RequestHash: r.Hash(), Time: s.now().UTC().Truncate(time.Second),
		TokenSerial: tokenField(serial), TokenLabel: tokenField(label)}
	t.Participants = append(t.Participants, [2]string{r.Requester, "requester"})
	for _, a := range c.Approvals {
		t.Participants = append(t.Participants, [2]string{a.Officer, "approver"})
	}
	dir := filepath.Join(s.outDir, kind+"-"+r.ID)
	var err error
	switch kind {
	case KindGenesis:
		err = s.runGenesis(ctx, r, t, out)
	case KindBackup:
		err = s.runBackup(ctx, r, c.col, t, out, dir)
	case KindRestore:
		err = s.runRestore(ctx, r, c.ask, c.col, t, out)
	case KindRotate:
		err = s.runRotate(ctx, t, out)
	case KindRetire:
		err = s.runRetire(ctx, r, t, out)
	default:
		err = fmt.Errorf("%w: kind %q", ErrUnknownRequest, kind)
	}
	c.Abort() // spent or not, the shares are cleared
	if err == nil {
		err = s.writeTranscript(ctx, t, out, dir)
	}
	if err != nil {
		return nil, err
	}
	files := map[string]string{}
	for _, f := range append(out.Outputs, out.Transcript) {
		files[f.Name] = f.Holder
	}
	s.mu.Lock()
	s.outputs[r.ID] = executed{dir: dir, files: files}
	s.mu.Unlock()
	return out, nil
}

func tokenField(s string) string {
	out := []byte{}
	for i := 0; i < len(s); i++ {
		if s[i] > 0x20 && s[i] < 0x7f {
			out = append(out, s[i])
		}
	}
	if len(out) == 0 {
		return "-"
	}
	return string(out)
}

func fingerprint(label string, pub []byte, created bool) KeyFingerprint {
	return KeyFingerprint{Label: label, SHA256: Fingerprint(pub), Words: FingerprintWords(pub), Created: created}
}

func (s *Service) runGenesis(ctx context.Context, r Request, t *Transcript, out *Result) error {
	created, err := s.keys.Genesis(ctx, s.now(), "ceremony "+r.ID)
	if err != nil {
		return err
	}
	signer, logCreated, err := s.logSigner(ctx)
	if err != nil {
		return err
	}
	isNew := func(label string) bool {
		return slices.ContainsFunc(created, func(v keys.Version) bool { return v.Label == label })
	}
	esc, err := s.keys.Escrow()
	if err != nil {
		return err
	}
	sg, err := s.keys.Signer()
	if err != nil {
		return err
	}
	sk, err := s.dev.FindKey(ctx, sg.Label())
	if err != nil {
		return err
	}
	out.Fingerprints = []KeyFingerprint{fingerprint(esc.Label, esc.Public, isNew(esc.Label)),
		fingerprint(sk.Label, sk.Public, isNew(sk.Label)), fingerprint(s.logLabel, signer.Public(), logCreated)}
	for _, f := range out.Fingerprints {
		t.Fingerprints = append(t.Fingerprints, [2]string{f.Label, f.SHA256})
		if !f.Created {
			t.Deviations = append(t.Deviations, f.Label+" existed before this genesis and was kept")
		}
	}
	return nil
}

func (s *Service) runBackup(ctx context.Context, r Request, soPIN *Collector, t *Transcript, out *Result, dir string) error {
	n, _ := strconv.Atoi(r.Params["n"])
	if n < r.Quorum || n > len(s.Officers().List) {
		return fmt.Errorf("%w: n %d", ErrFormat, n)
	}
	for _, who := range soPIN.Submitters() {
		t.Participants = append(t.Participants, [2]string{who, "so-pin-holder"})
	}
	signer, _, err := s.logSigner(ctx)
	if err != nil {
		return err
	}
	holders := s.Officers().List[:n]
	res, err := Backup(ctx, s.dev, r.Params["key_label"], soPIN, holders, r.Quorum, signer, s.now())
	if err != nil {
		return err
	}
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	add := func(name, holder string, data []byte) error {
		p := filepath.Join(dir, name)
		if err := durable.Create(p, data, 0o600); err != nil {
			return fmt.Errorf("ceremony output: %w", err)
		}
		sum := sha256Hex(data)
		out.Outputs = append(out.Outputs, OutputFile{Name: name, Path: p, SHA256: sum, Holder: holder})
		t.Outputs = append(t.Outputs, [2]string{name, sum})
		return nil
	}
	if err := add("manifest.json", "", res.ManifestFile); err != nil {
		return err
	}
	for i, f := range res.ShareFiles {
		if err := add(fmt.Sprintf("share-%d-%s.age", i+1, res.Officers[i].Name), res.Officers[i].Name, f); err != nil {
			return err
		}
		t.Participants = append(t.Participants, [2]string{res.Officers[i].Name, "share-holder"})
	}
	out.KCV, out.BackupID, t.KCV = res.Manifest.KCV, res.Manifest.BackupID, res.Manifest.KCV
	fp := fingerprint(res.Manifest.KeyLabel, res.Manifest.Public, false)
	out.Fingerprints = []KeyFingerprint{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

func (s *Service) runRestore(ctx context.Context, r Request, a ask, col *Collector, t *Transcript, out *Result) error {
	m := a.manifest
	for _, who := range col.Submitters() {
		t.Participants = append(t.Participants, [2]string{who, "submitter"})
	}
	if err := Restore(ctx, s.dev, m, col); err != nil {
		return err
	}
	info, err := s.dev.FindKey(ctx, m.KeyLabel)
	if err != nil {
		return err
	}
	if err := s.keys.Adopt(info); err != nil {
		return err
	}
	if err := s.keys.MarkGenesis(ctx, s.now(), "restore "+r.ID); err != nil {
		return err
	}
	out.KCV, out.BackupID, t.KCV = m.KCV, m.BackupID, m.KCV
	fp := fingerprint(m.KeyLabel, m.Public, true)
	out.Fingerprints = []KeyFingerprint{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	t.Outputs = append(t.Outputs, [2]string{"manifest.json", r.Params["manifest_sha256"]})
	t.Deviations = append(t.Deviations, "manifest signed by "+a.signer)
	return nil
}

func (s *Service) runRotate(ctx context.Context, t *Transcript, out *Result) error {
	v, err := s.keys.RotateEscrow(ctx, s.now())
	if err != nil {
		return err
	}
	for _, old := range s.keys.EscrowVersions() {
		if old.Number != v.Number && old.Destroyed.IsZero() {
			t.Fingerprints = append(t.Fingerprints, [2]string{old.Label, old.Fingerprint()})
		}
	}
	fp := fingerprint(v.Label, v.Public, true)
	out.Fingerprints = []KeyFingerprint{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

// runRetire destroys an older escrow key version on the token, as the
// approved request says; the transcript names it by its fingerprint.
func (s *Service) runRetire(ctx context.Context, r Request, t *Transcript, out *Result) error {
	n, err := strconv.ParseUint(r.Params["version"], 10, 32)
	if err != nil {
		return badInput("param version: %q", r.Params["version"])
	}
	v, err := s.keys.EscrowVersion(uint32(n))
	if err != nil {
		return err
	}
	fp := fingerprint(v.Label, v.Public, false)
	if _, err := s.keys.Retire(ctx, "", true, uint32(n), s.now(), "ceremony "+r.ID); err != nil {
		return err
	}
	out.Fingerprints = []KeyFingerprint{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

// logSigner is the access log's key on the token, created if missing.
func (s *Service) logSigner(ctx context.Context) (*auditlog.DeviceSigner, bool, error) {
	return auditlog.EnsureDeviceSigner(ctx, s.dev, s.logOrigin, s.logLabel, s.now())
}

// writeTranscript signs t with the access log's key and writes it as
// transcript.txt in dir.
func (s *Service) writeTranscript(ctx context.Context, t *Transcript, out *Result, dir string) error {
	text, err := t.Text()
	if err != nil {
		return err
	}
	signer, _, err := s.logSigner(ctx)
	if err != nil {
		return err
	}
	signed, err := SignTranscript(text, signer)
	if err != nil {
		return err
	}
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	p := filepath.Join(dir, "transcript.txt")
	if err := durable.Create(p, signed, 0o600); err != nil {
		return fmt.Errorf("ceremony output: %w", err)
	}
	out.Transcript = OutputFile{Name: "transcript.txt", Path: p, SHA256: sha256Hex(signed)}
	return nil
}

// mkdirPrivate makes dir (and its parents) mode 0700 and refuses a
// directory that others can read: ceremony outputs are the daemon user's.
func mkdirPrivate(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	st, err := os.Lstat(dir)
	if err != nil {
		return err
	}
	if !st.IsDir() || st.Mode().Perm()&0o077 != 0 {
		return fmt.Errorf("ceremony output directory %s: mode %04o, want a directory of mode 0700", dir, st.Mode().Perm())
	}
	return nil
}
