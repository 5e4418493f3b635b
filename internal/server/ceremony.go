package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/keys"
)

// Escrow key ceremonies over the socket (docs/ceremonies.md). A caller acts
// as an officer only if the policy gives its principal role "officer" (the
// routes' permission) AND its Unix user is in the officers file. Each step
// is one access-log entry through Server.record; an executed ceremony adds
// a second entry naming its signed transcript's SHA-256.
//
// Flow: an officer creates a request (kind, params, M, N, window); M other
// officers approve its hash and nonce, each as their own Unix user; any
// officer then executes it once (genesis, backup, rotate). A restore also
// needs M officers to submit their own decrypted shares before it runs.
//
// Pending requests and submitted shares live in memory: a restart forgets
// them (a quorum is gathered in one sitting).

// CeremonyDevice is what ceremonies need from the token (*hsm.Token).
type CeremonyDevice interface {
	ceremony.Device
	auditlog.KeyStore
	Info() hsm.TokenInfo
}

// Ceremonies configures the ceremony routes; Deps.Ceremonies nil makes
// them answer ceremony_unavailable.
type Ceremonies struct {
	Officers    *ceremony.Officers // at start; ReplaceOfficers changes them
	SOPINFile   string             // security officer PIN, for backups
	OutputDir   string             // transcripts, manifests and share files
	Device      CeremonyDevice
	LogOrigin   string // the access log's origin: the transcript signer's name
	LogKeyLabel string // the access log's Ed25519 key on the token

	current   atomic.Pointer[ceremony.Officers]
	once      sync.Once
	approvals ceremony.Approvals
	mu        sync.Mutex
	restores  map[string]*ceremony.Restore // by request id
}

// Limits of a request.
const (
	minCeremonyWindow     = time.Minute
	maxCeremonyWindow     = 24 * time.Hour
	defaultCeremonyWindow = time.Hour
)

// officers returns the officers now in force.
func (c *Ceremonies) officers() *ceremony.Officers {
	if o := c.current.Load(); o != nil {
		return o
	}
	return c.Officers
}

// ReplaceOfficers puts offs in force (custodyd does it on SIGHUP, from the
// officers file). If they differ from the officers in force, every pending
// request is cancelled, its shares included, because its quorum was being
// gathered among the old officers; the cancelled ids are returned.
func (c *Ceremonies) ReplaceOfficers(offs *ceremony.Officers) (changed bool, cancelled []string) {
	if offs == nil || c.officers().Equal(offs) {
		return false, nil
	}
	c.current.Store(offs)
	cancelled = c.approvals.CancelPending()
	c.mu.Lock()
	for id, rs := range c.restores {
		rs.Abort()
		delete(c.restores, id)
	}
	c.mu.Unlock()
	return true, cancelled
}

func (s *Server) ceremonies() (*Ceremonies, error) {
	c := s.Deps.Ceremonies
	if c == nil || c.Officers == nil || c.Device == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeCeremonyUnavailable, "escrow key ceremonies are not configured: the daemon has no ceremony.officers_file")
	}
	c.once.Do(func() {
		c.approvals.Now = s.Now
		c.mu.Lock()
		c.restores = map[string]*ceremony.Restore{}
		c.mu.Unlock()
	})
	return c, nil
}

// officer returns the caller as an officer: the route already checked role
// officer; the officers file must list the caller's uid too.
func (s *Server) officer(rq *request) (*Ceremonies, ceremony.Officer, error) {
	c, err := s.ceremonies()
	if err != nil {
		return nil, ceremony.Officer{}, err
	}
	o, err := c.officers().ByUID(rq.peer.UID)
	if err != nil {
		return nil, ceremony.Officer{}, fmt.Errorf("%w: principal %q has role officer but uid %d is not in the officers file", ceremony.ErrNotOfficer, rq.principal.Name, rq.peer.UID)
	}
	return c, o, nil
}

// recorded records the step and returns err, or log_unavailable.
func (s *Server) recorded(ctx context.Context, rq *request, op, detail string, err error) error {
	if rerr := s.record(ctx, rq, auditlog.Entry{Operation: op, Detail: detail}, err); rerr != nil {
		return rerr
	}
	return err
}

type requestView struct {
	ID        string            `json:"id"`
	Kind      string            `json:"kind"`
	Params    map[string]string `json:"params"`
	Requester string            `json:"requester"`
	Quorum    int               `json:"m"`
	NotBefore time.Time         `json:"not_before"`
	NotAfter  time.Time         `json:"not_after"`
	Nonce     string            `json:"nonce"`
	Hash      string            `json:"hash"` // SHA-256 of canonical: what officers approve
	Canonical string            `json:"canonical"`
	Approvals []string          `json:"approvals"`
	Shares    int               `json:"shares,omitempty"` // restore: shares submitted
}

func (s *Server) viewRequest(c *Ceremonies, r ceremony.Request, aps []ceremony.Approval) requestView {
	v := requestView{ID: r.ID, Kind: r.Kind, Params: r.Params, Requester: r.Requester, Quorum: r.Quorum,
		NotBefore: r.NotBefore, NotAfter: r.NotAfter, Nonce: r.Nonce, Hash: r.Hash(), Canonical: r.Canonical(), Approvals: []string{}}
	for _, a := range aps {
		v.Approvals = append(v.Approvals, a.Officer)
	}
	c.mu.Lock()
	if rs := c.restores[r.ID]; rs != nil {
		v.Shares = rs.Count()
	}
	c.mu.Unlock()
	return v
}

type ceremonyRequestIn struct {
	Kind     string            `json:"kind"`
	Params   map[string]string `json:"params"`
	M        int               `json:"m"`
	N        int               `json:"n"`        // backup: shares to make (the first N officers of the file); 0 = every officer
	Window   string            `json:"window"`   // Go duration; "" = 1h
	Manifest string            `json:"manifest"` // restore: the backup manifest (its JSON text)
}

// ceremonyCreate: POST /v1/ceremony/requests.
func (s *Server) ceremonyCreate(ctx context.Context, rq *request) (any, error) {
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.request", "", err)
	}
	var in ceremonyRequestIn
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.request", "", err)
	}
	r, err := s.newRequest(ctx, c, o, in)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.request", "kind "+clip(in.Kind), err)
	}
	if err := s.recorded(ctx, rq, "ceremony.request", fmt.Sprintf("request %s kind %s m %d sha256 %s", r.ID, r.Kind, r.Quorum, r.Hash()), nil); err != nil {
		return nil, err
	}
	return s.viewRequest(c, r, nil), nil
}

func (s *Server) newRequest(ctx context.Context, c *Ceremonies, o ceremony.Officer, in ceremonyRequestIn) (ceremony.Request, error) {
	var none ceremony.Request
	window := defaultCeremonyWindow
	if in.Window != "" {
		d, err := time.ParseDuration(in.Window)
		if err != nil || d < minCeremonyWindow || d > maxCeremonyWindow {
			return none, badRequest("window: %q is not a duration from %s to %s", in.Window, minCeremonyWindow, maxCeremonyWindow)
		}
		window = d
	}
	others := len(c.officers().List) - 1
	if in.M < 1 || in.M > others {
		return none, badRequest("m: %d approvals needed, but only %d other officers exist; want 1..%d", in.M, others, others)
	}
	params := map[string]string{}
	for k, v := range in.Params {
		params[k] = v
	}
	var restore *ceremony.Restore
	switch in.Kind {
	case ceremony.KindGenesis, ceremony.KindRotate, ceremony.KindRetire:
		if in.N != 0 || in.Manifest != "" {
			return none, badRequest("n and manifest are for backup and restore requests")
		}
		if in.Kind == ceremony.KindRetire {
			if err := s.checkRetireParams(params); err != nil {
				return none, err
			}
		}
	case ceremony.KindBackup:
		n := in.N
		if n == 0 {
			n = len(c.officers().List)
		}
		if in.M < 2 || n < in.M || n > len(c.officers().List) {
			return none, badRequest("n: %d shares with threshold m %d; want 2 <= m <= n <= %d officers", n, in.M, len(c.officers().List))
		}
		if in.Manifest != "" {
			return none, badRequest("manifest: only for restore requests")
		}
		esc, err := s.Keys.Escrow()
		if err != nil {
			return none, err
		}
		if params["key_label"] == "" {
			params["key_label"] = esc.Label
		}
		if _, err := c.Device.FindKey(ctx, params["key_label"]); err != nil {
			return none, fmt.Errorf("backup of %q: %w", params["key_label"], err)
		}
		params["n"] = strconv.Itoa(n)
	case ceremony.KindRestore:
		if in.N != 0 {
			return none, badRequest("n: not for restore requests (the manifest says)")
		}
		m, err := ceremony.ParseManifest([]byte(in.Manifest))
		if err != nil {
			return none, err
		}
		if m.Threshold != in.M {
			return none, badRequest("m: %d, but the backup's threshold is %d", in.M, m.Threshold)
		}
		sum := sha256.Sum256([]byte(in.Manifest))
		params["backup_id"], params["key_label"], params["manifest_digest"] = m.BackupID, m.KeyLabel, hex.EncodeToString(sum[:])
		restore = ceremony.NewRestore(m)
	default:
		return none, badRequest("kind: %q is not genesis, backup, restore, rotate or retire", in.Kind)
	}
	r, err := c.approvals.Create(o, in.Kind, params, in.M, window)
	if err != nil {
		return none, err
	}
	c.mu.Lock()
	for id, rs := range c.restores { // forget restores whose request is gone
		if _, _, err := c.approvals.Get(id); err != nil {
			rs.Abort()
			delete(c.restores, id)
		}
	}
	if restore != nil {
		c.restores[r.ID] = restore
	}
	c.mu.Unlock()
	return r, nil
}

// ceremonyShow: GET /v1/ceremony/requests/{id}.
func (s *Server) ceremonyShow(ctx context.Context, rq *request) (any, error) {
	c, _, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.show", "", err)
	}
	r, aps, err := c.approvals.Get(rq.PathValue("id"))
	if err != nil {
		return nil, err
	}
	return s.viewRequest(c, r, aps), nil
}

type ceremonyStatus struct {
	Officer        string        `json:"officer"`
	Genesis        bool          `json:"genesis"`
	EscrowVersions []escrowView  `json:"escrow_versions"`
	Pending        []requestView `json:"pending"`
}

type escrowView struct {
	Label       string `json:"label"`
	Version     uint32 `json:"version"`
	State       string `json:"state"` // active, decrypt-only, destroyed
	Fingerprint string `json:"sha256"`
	Created     string `json:"created,omitempty"`
}

// ceremonyStatusRoute: GET /v1/ceremony.
func (s *Server) ceremonyStatusRoute(ctx context.Context, rq *request) (any, error) {
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.status", "", err)
	}
	g, err := s.Keys.GenesisDone(ctx)
	if err != nil {
		return nil, err
	}
	out := ceremonyStatus{Officer: o.Name, Genesis: g, EscrowVersions: []escrowView{}, Pending: []requestView{}}
	vs := s.Keys.EscrowVersions()
	for i, v := range vs {
		st := "decrypt-only"
		switch {
		case !v.Destroyed.IsZero():
			st = "destroyed"
		case i == len(vs)-1:
			st = "active"
		}
		ev := escrowView{Label: v.Label, Version: v.Number, State: st, Fingerprint: v.Fingerprint()}
		if !v.Created.IsZero() {
			ev.Created = v.Created.UTC().Format(time.DateOnly)
		}
		out.EscrowVersions = append(out.EscrowVersions, ev)
	}
	for _, id := range c.approvals.Pending() {
		if r, aps, err := c.approvals.Get(id); err == nil {
			out.Pending = append(out.Pending, s.viewRequest(c, r, aps))
		}
	}
	return out, nil
}

type approveIn struct {
	Hash  string `json:"hash"`
	Nonce string `json:"nonce"`
}

// ceremonyApprove: POST /v1/ceremony/requests/{id}/approve.
func (s *Server) ceremonyApprove(ctx context.Context, rq *request) (any, error) {
	id := clip(rq.PathValue("id"))
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.approve", "request "+id, err)
	}
	var in approveIn
	if err := decodeJSON(rq.Request, &in); err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.approve", "request "+id, err)
	}
	n, err := c.approvals.Approve(o, id, in.Hash, in.Nonce)
	detail := fmt.Sprintf("request %s sha256 %s by %s (%d approvals)", id, clip(in.Hash), o.Name, n)
	if err := s.recorded(ctx, rq, "ceremony.approve", detail, err); err != nil {
		return nil, err
	}
	r, aps, err := c.approvals.Get(id)
	if err != nil {
		return nil, err
	}
	return s.viewRequest(c, r, aps), nil
}

type shareIn struct {
	Share string `json:"share"` // the decrypted share text (custody-share v1)
}

// ceremonyShare: POST /v1/ceremony/requests/{id}/shares. The share must be
// the caller's own (the officer it names); it is never logged.
func (s *Server) ceremonyShare(ctx context.Context, rq *request) (any, error) {
	id := clip(rq.PathValue("id"))
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.share", "request "+id, err)
	}
	var in shareIn
	err = decodeJSON(rq.Request, &in)
	b := []byte(in.Share)
	in.Share = ""
	defer clear(b)
	var n int
	var sh ceremony.Share
	detail := "request " + id + " share by " + o.Name
	if err == nil {
		sh, err = ceremony.ParseShare(b)
		clear(sh.Value)
	}
	if err == nil {
		detail = fmt.Sprintf("request %s share %d of backup %s by %s", id, sh.Index, sh.BackupID, o.Name)
		if sh.Officer != o.Name {
			err = errorf(http.StatusForbidden, CodeNotShareHolder, "share %d is %s's; each officer submits their own share as their own Unix user", sh.Index, sh.Officer)
		}
	}
	var rs *ceremony.Restore
	if err == nil {
		r, _, gerr := c.approvals.Get(id)
		c.mu.Lock()
		rs = c.restores[id]
		c.mu.Unlock()
		switch {
		case gerr != nil:
			err = gerr
		case r.Kind != ceremony.KindRestore || rs == nil:
			err = fmt.Errorf("%w: %s is a %s request, not a restore", ceremony.ErrUnknownRequest, id, r.Kind)
		case s.Now().After(r.NotAfter):
			err = fmt.Errorf("%w: request %s closed at %s", ceremony.ErrExpired, id, r.NotAfter.Format(time.RFC3339))
		}
	}
	if err == nil {
		n, err = rs.Submit(o.Name, b)
	}
	if err := s.recorded(ctx, rq, "ceremony.share", detail, err); err != nil {
		return nil, err
	}
	return map[string]any{"request": id, "shares": n, "threshold": rs.Manifest().Threshold}, nil
}

type executeIn struct {
	Request string `json:"request"`
}

// outputFile is one file a ceremony wrote.
type outputFile struct {
	Path   string `json:"path"`
	SHA256 string `json:"sha256"`
}

type fingerprintView struct {
	Label   string `json:"label"`
	SHA256  string `json:"sha256"`
	Words   string `json:"words"`
	Created bool   `json:"created,omitempty"`
}

type executeOut struct {
	Request      string            `json:"request"`
	Kind         string            `json:"kind"`
	Fingerprints []fingerprintView `json:"fingerprints,omitempty"`
	Outputs      []outputFile      `json:"outputs,omitempty"`
	KCV          string            `json:"kcv,omitempty"`
	BackupID     string            `json:"backup_id,omitempty"`
	Transcript   outputFile        `json:"transcript"`
}

// ceremonyExecute returns the handler running an approved request of kind.
func (s *Server) ceremonyExecute(kind string) handler {
	return func(ctx context.Context, rq *request) (any, error) {
		op := "ceremony." + kind
		c, o, err := s.officer(rq)
		if err != nil {
			return nil, s.recorded(ctx, rq, op, "", err)
		}
		var in executeIn
		if err := decodeJSON(rq.Request, &in); err != nil {
			return nil, s.recorded(ctx, rq, op, "", err)
		}
		id := clip(in.Request)
		var r ceremony.Request
		var aps []ceremony.Approval
		var rs *ceremony.Restore
		if kind == ceremony.KindRestore {
			r, aps, rs, err = s.claimRestore(c, id)
		} else {
			r, aps, err = c.approvals.Consume(id, kind)
		}
		detail := fmt.Sprintf("request %s sha256 %s executed by %s", id, r.Hash(), o.Name)
		if err != nil {
			detail = "request " + id
		}
		// The decision, durable before the token is touched.
		if err := s.recorded(ctx, rq, op, detail, err); err != nil {
			if rs != nil {
				rs.Abort()
			}
			return nil, err
		}
		out := &executeOut{Request: r.ID, Kind: kind}
		t := &ceremony.Transcript{Kind: kind, RequestID: r.ID, RequestHash: r.Hash(), Time: s.Now().UTC().Truncate(time.Second),
			TokenSerial: tokenField(c.Device.Info().Serial), TokenLabel: tokenField(c.Device.Info().Label)}
		t.Participants = append(t.Participants, [2]string{r.Requester, "requester"})
		for _, a := range aps {
			t.Participants = append(t.Participants, [2]string{a.Officer, "approver"})
		}
		dir := filepath.Join(c.OutputDir, kind+"-"+r.ID)
		switch kind {
		case ceremony.KindGenesis:
			err = s.runGenesis(ctx, c, r, t, out)
		case ceremony.KindBackup:
			err = s.runBackup(ctx, c, r, t, out, dir)
		case ceremony.KindRestore:
			err = s.runRestore(ctx, c, r, rs, t, out)
		case ceremony.KindRotate:
			err = s.runRotate(ctx, r, t, out)
		case ceremony.KindRetire:
			err = s.runRetire(ctx, r, t, out)
		}
		if err == nil {
			err = s.writeTranscript(ctx, c, t, out, dir)
		}
		if err != nil {
			if errors.Is(err, keys.ErrNoDaemonKeys) || errors.Is(err, hsm.ErrPINFile) {
				s.Log.Error("ceremony failed", "op", op, "request", r.ID, "err", err)
			}
			return nil, s.recorded(ctx, rq, op, "request "+r.ID+" failed", err)
		}
		detail = fmt.Sprintf("request %s transcript sha256 %s %s", r.ID, out.Transcript.SHA256, out.Transcript.Path)
		if err := s.recorded(ctx, rq, "ceremony.transcript", detail, nil); err != nil {
			return nil, err
		}
		return out, nil
	}
}

// claimRestore checks that a restore request has its quorum and at least
// M shares, then consumes it. Below M shares the request stays pending (more
// officers may still submit) and nothing is touched.
func (s *Server) claimRestore(c *Ceremonies, id string) (ceremony.Request, []ceremony.Approval, *ceremony.Restore, error) {
	r, aps, err := c.approvals.Get(id)
	if err != nil {
		return r, nil, nil, err
	}
	c.mu.Lock()
	rs := c.restores[id]
	c.mu.Unlock()
	if r.Kind != ceremony.KindRestore || rs == nil {
		return r, nil, nil, fmt.Errorf("%w: no pending restore request %q", ceremony.ErrUnknownRequest, id)
	}
	if len(aps) >= r.Quorum && rs.Count() < rs.Manifest().Threshold {
		return r, nil, nil, fmt.Errorf("%w: %d of %d shares submitted", ceremony.ErrNotEnoughShares, rs.Count(), rs.Manifest().Threshold)
	}
	if r, aps, err = c.approvals.Consume(id, ceremony.KindRestore); err != nil {
		return r, nil, nil, err
	}
	c.mu.Lock()
	delete(c.restores, id)
	c.mu.Unlock()
	return r, aps, rs, nil
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

func fingerprint(label string, pub []byte, created bool) fingerprintView {
	return fingerprintView{Label: label, SHA256: ceremony.Fingerprint(pub), Words: ceremony.FingerprintWords(pub), Created: created}
}

func (s *Server) runGenesis(ctx context.Context, c *Ceremonies, r ceremony.Request, t *ceremony.Transcript, out *executeOut) error {
	created, err := s.Keys.Genesis(ctx, s.Now(), "ceremony "+r.ID)
	if err != nil {
		return err
	}
	signer, logCreated, err := auditlog.EnsureDeviceSigner(ctx, c.Device, c.LogOrigin, c.LogKeyLabel, s.Now())
	if err != nil {
		return err
	}
	isNew := func(label string) bool {
		return slices.ContainsFunc(created, func(v keys.Version) bool { return v.Label == label })
	}
	esc, err := s.Keys.Escrow()
	if err != nil {
		return err
	}
	sg, err := s.Keys.Signer()
	if err != nil {
		return err
	}
	sk, err := c.Device.FindKey(ctx, sg.Label())
	if err != nil {
		return err
	}
	out.Fingerprints = []fingerprintView{fingerprint(esc.Label, esc.Public, isNew(esc.Label)),
		fingerprint(sk.Label, sk.Public, isNew(sk.Label)), fingerprint(c.LogKeyLabel, signer.Public(), logCreated)}
	for _, f := range out.Fingerprints {
		t.Fingerprints = append(t.Fingerprints, [2]string{f.Label, f.SHA256})
		if !f.Created {
			t.Deviations = append(t.Deviations, f.Label+" existed before this genesis and was kept")
		}
	}
	return nil
}

func (s *Server) runBackup(ctx context.Context, c *Ceremonies, r ceremony.Request, t *ceremony.Transcript, out *executeOut, dir string) error {
	n, _ := strconv.Atoi(r.Params["n"])
	if n < r.Quorum || n > len(c.officers().List) {
		return fmt.Errorf("%w: n %d", ceremony.ErrFormat, n)
	}
	holders := c.officers().List[:n]
	res, err := ceremony.Backup(ctx, c.Device, r.Params["key_label"], c.SOPINFile, holders, r.Quorum, s.Now())
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	add := func(name string, data []byte) error {
		p := filepath.Join(dir, name)
		if err := writeDurable(p, data, 0o644); err != nil {
			return err
		}
		sum := sha256.Sum256(data)
		out.Outputs = append(out.Outputs, outputFile{Path: p, SHA256: hex.EncodeToString(sum[:])})
		t.Outputs = append(t.Outputs, [2]string{name, hex.EncodeToString(sum[:])})
		return nil
	}
	if err := add("manifest.json", res.Manifest.Marshal()); err != nil {
		return err
	}
	for i, f := range res.ShareFiles {
		if err := add(fmt.Sprintf("share-%d-%s.age", i+1, res.Officers[i].Name), f); err != nil {
			return err
		}
		t.Participants = append(t.Participants, [2]string{res.Officers[i].Name, "share-holder"})
	}
	out.KCV, out.BackupID, t.KCV = res.Manifest.KCV, res.Manifest.BackupID, res.Manifest.KCV
	fp := fingerprint(res.Manifest.KeyLabel, res.Manifest.Public, false)
	out.Fingerprints = []fingerprintView{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

func (s *Server) runRestore(ctx context.Context, c *Ceremonies, r ceremony.Request, rs *ceremony.Restore, t *ceremony.Transcript, out *executeOut) error {
	m := rs.Manifest()
	for _, who := range rs.Submitters() {
		t.Participants = append(t.Participants, [2]string{who, "submitter"})
	}
	if err := rs.Finish(ctx, c.Device); err != nil {
		return err
	}
	info, err := c.Device.FindKey(ctx, m.KeyLabel)
	if err != nil {
		return err
	}
	if err := s.Keys.Adopt(info); err != nil {
		return err
	}
	if err := s.Keys.MarkGenesis(ctx, s.Now(), "restore "+r.ID); err != nil {
		return err
	}
	out.KCV, out.BackupID, t.KCV = m.KCV, m.BackupID, m.KCV
	fp := fingerprint(m.KeyLabel, m.Public, true)
	out.Fingerprints = []fingerprintView{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	t.Outputs = append(t.Outputs, [2]string{"manifest.json", r.Params["manifest_digest"]})
	return nil
}

func (s *Server) runRotate(ctx context.Context, r ceremony.Request, t *ceremony.Transcript, out *executeOut) error {
	v, err := s.Keys.RotateEscrow(ctx, s.Now())
	if err != nil {
		return err
	}
	for _, old := range s.Keys.EscrowVersions() {
		if old.Number != v.Number && old.Destroyed.IsZero() {
			t.Fingerprints = append(t.Fingerprints, [2]string{old.Label, old.Fingerprint()})
		}
	}
	fp := fingerprint(v.Label, v.Public, true)
	out.Fingerprints = []fingerprintView{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

// checkRetireParams checks a retire request: "version", an escrow key
// version that is neither active nor destroyed, and "rewrapped_count", the
// number of envelopes the last rewrap run moved (the confirmation that
// participant retirement asks for too). Both are rewritten in canonical
// form, so that the text the officers approve says exactly what happens.
func (s *Server) checkRetireParams(params map[string]string) error {
	for k := range params {
		if k != "version" && k != "rewrapped_count" {
			return badRequest("param %s: a retire request takes version and rewrapped_count only", k)
		}
	}
	n, err := strconv.ParseUint(params["version"], 10, 32)
	if err != nil || n == 0 {
		return badRequest("param version: %q is not an escrow key version (see custodyctl ceremony status)", params["version"])
	}
	count, err := strconv.ParseUint(params["rewrapped_count"], 10, 63)
	if err != nil {
		return errorf(http.StatusBadRequest, CodeRetireUnconfirmed, "retiring destroys the escrow key version for good, and with it every audit decrypt of an envelope not rewrapped: give --param rewrapped_count=N, the count of your last rewrap run")
	}
	v, err := s.Keys.EscrowVersion(uint32(n))
	if err != nil {
		return err
	}
	if active, err := s.Keys.Escrow(); err == nil && active.Number == v.Number {
		return fmt.Errorf("%w: escrow v%d is active; rotate first", keys.ErrActiveVersion, n)
	}
	params["version"], params["rewrapped_count"] = strconv.FormatUint(n, 10), strconv.FormatUint(count, 10)
	return nil
}

// runRetire destroys an older escrow key version on the token, as the
// approved request says; the transcript names it by its fingerprint.
func (s *Server) runRetire(ctx context.Context, r ceremony.Request, t *ceremony.Transcript, out *executeOut) error {
	n, err := strconv.ParseUint(r.Params["version"], 10, 32)
	if err != nil {
		return badRequest("param version: %q", r.Params["version"])
	}
	v, err := s.Keys.EscrowVersion(uint32(n))
	if err != nil {
		return err
	}
	fp := fingerprint(v.Label, v.Public, false)
	if _, err := s.Keys.Retire(ctx, "", true, uint32(n), s.Now(), "ceremony "+r.ID); err != nil {
		return err
	}
	out.Fingerprints = []fingerprintView{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

// writeTranscript signs t with the access log's key and writes it as
// transcript.txt in dir.
func (s *Server) writeTranscript(ctx context.Context, c *Ceremonies, t *ceremony.Transcript, out *executeOut, dir string) error {
	text, err := t.Text()
	if err != nil {
		return err
	}
	signer, _, err := auditlog.EnsureDeviceSigner(ctx, c.Device, c.LogOrigin, c.LogKeyLabel, s.Now())
	if err != nil {
		return err
	}
	signed, err := ceremony.SignTranscript(text, signer)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	p := filepath.Join(dir, "transcript.txt")
	if err := writeDurable(p, signed, 0o644); err != nil {
		return err
	}
	sum := sha256.Sum256(signed)
	out.Transcript = outputFile{Path: p, SHA256: hex.EncodeToString(sum[:])}
	return nil
}

// writeDurable writes data to path through a temporary file: write, fsync,
// rename, fsync the directory. An existing file is an error.
func writeDurable(path string, data []byte, mode os.FileMode) error {
	if _, err := os.Lstat(path); err == nil {
		return fmt.Errorf("ceremony output %s: %w", path, os.ErrExist)
	}
	f, err := os.CreateTemp(filepath.Dir(path), ".tmp-*")
	if err != nil {
		return err
	}
	tmp := f.Name()
	defer os.Remove(tmp)
	if _, err := f.Write(data); err == nil {
		err = f.Chmod(mode)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		return err
	}
	if err := os.Rename(tmp, path); err != nil {
		return err
	}
	d, err := os.Open(filepath.Dir(path))
	if err != nil {
		return err
	}
	defer d.Close()
	return d.Sync()
}

// requireGenesis refuses audit decrypts until genesis has run on the token.
func (s *Server) requireGenesis(ctx context.Context) error {
	ok, err := s.Keys.GenesisDone(ctx)
	if err != nil {
		return err
	}
	if !ok {
		return keys.ErrNoGenesis
	}
	return nil
}
