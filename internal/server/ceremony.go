package server

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/hsm"
	"custody/internal/auditlog"
	"custody/internal/ceremony"
	"custody/internal/durable"
	"custody/internal/keys"
)

// Escrow key ceremonies over the socket (docs/ceremonies.md). A caller acts
// as an officer only if the policy gives its principal role "officer" (the
// routes' permission) AND its Unix user is in the officers file. Each step
// is one access-log entry through Server.record; an executed ceremony adds
// a second entry naming its signed transcript's SHA-256.
//
// Flow: an officer creates a request (kind, a few inputs, M, N, window);
// the daemon writes its params, which name the key, the token and the
// effect (ceremony_effects.go); M other officers approve its hash and
// nonce, each as their own Unix user; any officer then executes it once. A
// backup also needs officers to submit their SO PIN shares (the daemon has
// no SO PIN of its own), a restore their shares of the backup's KEK, before
// it runs. Outputs are 0600 files in 0700 directories of the daemon's
// user; officers fetch theirs over the socket (ceremonyFetch).
//
// Pending requests, submitted shares and the list of outputs live in
// memory: a restart forgets them (a quorum is gathered in one sitting; the
// files stay in output_dir).

// CeremonyDevice is what ceremonies need from the token (*hsm.Token).
type CeremonyDevice interface {
	ceremony.Device
	auditlog.KeyStore
	Info() hsm.TokenInfo
}

// Ceremonies configures the ceremony routes; Deps.Ceremonies nil makes
// them answer ceremony_unavailable.
type Ceremonies struct {
	Officers *ceremony.Officers // at start; ReplaceOfficers changes them
	// SOPIN is the public record of this token's SO PIN shares (custodyd
	// token init --officers); nil: backups are refused (so_pin_unavailable).
	SOPIN *ceremony.SOPINRecord
	// TrustedBackupSigners are the daemons' log keys whose backup manifests
	// a restore accepts; empty: every restore is refused.
	TrustedBackupSigners note.Verifiers
	// MinApprovals is the least M per kind; kinds absent get
	// DefaultMinApprovals. Restore and retire are never below 2.
	MinApprovals map[string]int
	// PendingPerOfficer bounds one officer's pending requests (0 = 4).
	PendingPerOfficer int
	OutputDir         string // transcripts, manifests and share files
	Device            CeremonyDevice
	LogOrigin         string // the access log's origin: the transcript signer's name
	LogKeyLabel       string // the access log's Ed25519 key on the token

	current   atomic.Pointer[ceremony.Officers]
	once      sync.Once
	approvals ceremony.Approvals
	mu        sync.Mutex
	asks      map[string]ask                 // by request id: what the requester chose
	shares    map[string]*ceremony.Collector // by request id: a backup's SO PIN shares, a restore's KEK shares
	outputs   map[string]executed            // executed requests' files
}

// executed is what a request wrote: file name → the officer who may fetch
// it ("" = any officer).
type executed struct {
	dir   string
	files map[string]string
}

// DefaultMinApprovals is the least number of approvals (besides the
// requester) per kind. Restoring a key and destroying one never take
// fewer than 2 (config.Validate refuses lower floors).
var DefaultMinApprovals = map[string]int{
	ceremony.KindGenesis: 2, ceremony.KindBackup: 2, ceremony.KindRestore: 2,
	ceremony.KindRotate: 1, ceremony.KindRetire: 2,
}

// minApprovals returns the floor for kind.
func (c *Ceremonies) minApprovals(kind string) int {
	if n, ok := c.MinApprovals[kind]; ok {
		return n
	}
	return DefaultMinApprovals[kind]
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
	for _, id := range cancelled {
		c.forgetLocked(id)
	}
	c.mu.Unlock()
	return true, cancelled
}

// forgetLocked drops what request id gathered (shares are cleared).
func (c *Ceremonies) forgetLocked(id string) {
	if col := c.shares[id]; col != nil {
		col.Abort()
	}
	delete(c.shares, id)
	delete(c.asks, id)
}

// collector returns the shares request id gathers: KEK shares for a
// restore, SO PIN shares for a backup; nil for other kinds.
func (c *Ceremonies) collector(id string) *ceremony.Collector {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.shares[id]
}

func (s *Server) ceremonies() (*Ceremonies, error) {
	c := s.Deps.Ceremonies
	if c == nil || c.Officers == nil || c.Device == nil {
		return nil, errorf(http.StatusServiceUnavailable, CodeCeremonyUnavailable, "escrow key ceremonies are not configured: the daemon has no ceremony.officers_file")
	}
	c.once.Do(func() {
		c.approvals.Now = s.Now
		c.approvals.PerRequester = c.PendingPerOfficer
		c.mu.Lock()
		c.asks = map[string]ask{}
		c.shares = map[string]*ceremony.Collector{}
		c.outputs = map[string]executed{}
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
	Shares    int               `json:"shares,omitempty"` // backup: SO PIN shares, restore: KEK shares submitted
	ShareKind string            `json:"share_kind,omitempty"`
	Needed    int               `json:"shares_needed,omitempty"`
}

func (s *Server) viewRequest(c *Ceremonies, r ceremony.Request, aps []ceremony.Approval) requestView {
	v := requestView{ID: r.ID, Kind: r.Kind, Params: r.Params, Requester: r.Requester, Quorum: r.Quorum,
		NotBefore: r.NotBefore, NotAfter: r.NotAfter, Nonce: r.Nonce, Hash: r.Hash(), Canonical: r.Canonical(), Approvals: []string{}}
	for _, a := range aps {
		v.Approvals = append(v.Approvals, a.Officer)
	}
	if col := c.collector(r.ID); col != nil {
		v.Shares, v.ShareKind, v.Needed = col.Count(), col.Set().Kind.String(), col.Set().Threshold
	}
	return v
}

type ceremonyRequestIn struct {
	Kind     string            `json:"kind"`
	Params   map[string]string `json:"params"` // backup: key_label; retire: version, rewrapped_count
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
	a, err := s.parseAsk(c, in)
	if err != nil {
		return none, err
	}
	others := len(c.officers().List) - 1
	if floor := c.minApprovals(in.Kind); in.M < floor || in.M > others {
		return none, badRequest("m: %d approvals; a %s request needs %d..%d (the configured floor is %d, and %d other officers exist)", in.M, in.Kind, floor, others, floor, others)
	}
	params, err := s.params(ctx, c, a)
	if err != nil {
		return none, err
	}
	r, err := c.approvals.Create(o, in.Kind, params, in.M, window)
	if err != nil {
		return none, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	for id := range c.asks { // forget what requests that are gone gathered
		if _, _, err := c.approvals.Get(id); err != nil {
			c.forgetLocked(id)
		}
	}
	c.asks[r.ID] = a
	switch in.Kind {
	case ceremony.KindRestore:
		c.shares[r.ID] = ceremony.NewCollector(a.manifest.ShareSet())
	case ceremony.KindBackup:
		c.shares[r.ID] = ceremony.NewCollector(c.SOPIN.ShareSet())
	}
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
	SOPIN          *soPINView    `json:"so_pin,omitempty"` // nil: not split, backups refused
	EscrowVersions []escrowView  `json:"escrow_versions"`
	Pending        []requestView `json:"pending"`
}

// soPINView is the public record of the token's SO PIN shares.
type soPINView struct {
	Set       string   `json:"set"`
	Threshold int      `json:"threshold"`
	Holders   []string `json:"holders"`
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
	if r := c.SOPIN; r != nil {
		out.SOPIN = &soPINView{Set: r.SetID, Threshold: r.Threshold}
		for _, sh := range r.Shares {
			out.SOPIN.Holders = append(out.SOPIN.Holders, sh.Officer)
		}
	}
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
	Share string `json:"share"` // the decrypted share text (custody-share v1 or custody-so-pin-share v1)
}

// ceremonyShare: POST /v1/ceremony/requests/{id}/shares. The share must be
// the caller's own (the officer it names): a share of the backup's KEK for
// a restore, an SO PIN share for a backup. It is never logged.
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
		detail = fmt.Sprintf("request %s %s %d of set %s by %s", id, sh.Kind, sh.Index, sh.BackupID, o.Name)
		if sh.Officer != o.Name {
			err = errorf(http.StatusForbidden, CodeNotShareHolder, "share %d is %s's; each officer submits their own share as their own Unix user", sh.Index, sh.Officer)
		}
	}
	var col *ceremony.Collector
	if err == nil {
		r, _, gerr := c.approvals.Get(id)
		col = c.collector(id)
		switch {
		case gerr != nil:
			err = gerr
		case col == nil:
			err = fmt.Errorf("%w: %s is a %s request, which takes no shares", ceremony.ErrUnknownRequest, id, r.Kind)
		case s.Now().After(r.NotAfter):
			err = fmt.Errorf("%w: request %s closed at %s", ceremony.ErrExpired, id, r.NotAfter.Format(time.RFC3339))
		}
	}
	if err == nil {
		n, err = col.Submit(o.Name, b)
	}
	if err := s.recorded(ctx, rq, "ceremony.share", detail, err); err != nil {
		return nil, err
	}
	return map[string]any{"request": id, "shares": n, "threshold": col.Set().Threshold, "kind": col.Set().Kind.String()}, nil
}

// fetchOut is one output file, for the officer allowed to have it.
type fetchOut struct {
	Request string `json:"request"`
	Name    string `json:"name"`
	SHA256  string `json:"sha256"`
	Data    []byte `json:"data"` // the file's bytes (base64 in JSON)
}

// maxOutputFile bounds a fetched file (manifests and share files are a few KiB).
const maxOutputFile = 1 << 20

// ceremonyFetch: GET /v1/ceremony/requests/{id}/outputs/{name}. Output
// files are 0600 in the daemon user's directory; an officer fetches a
// share file only if it is theirs, the manifest and the transcript
// whatever share they hold. Every fetch is an access-log entry.
func (s *Server) ceremonyFetch(ctx context.Context, rq *request) (any, error) {
	id, name := clip(rq.PathValue("id")), clip(rq.PathValue("name"))
	detail := fmt.Sprintf("request %s output %s", id, name)
	c, o, err := s.officer(rq)
	if err != nil {
		return nil, s.recorded(ctx, rq, "ceremony.fetch", detail, err)
	}
	c.mu.Lock()
	ex, ok := c.outputs[id]
	c.mu.Unlock()
	holder, known := ex.files[name]
	var data []byte
	switch {
	case !ok:
		err = fmt.Errorf("%w: no executed request %q in this daemon's memory (after a restart, the daemon's operator copies the files from ceremony.output_dir)", ceremony.ErrUnknownRequest, id)
	case !known:
		err = fmt.Errorf("%w: request %s wrote no %q", ceremony.ErrUnknownRequest, id, name)
	case holder != "" && holder != o.Name:
		err = errorf(http.StatusForbidden, CodeNotShareHolder, "%s is %s's share file; each officer fetches only their own", name, holder)
	default:
		data, err = readBounded(filepath.Join(ex.dir, name), maxOutputFile)
	}
	if err := s.recorded(ctx, rq, "ceremony.fetch", detail+" by "+o.Name, err); err != nil {
		return nil, err
	}
	return fetchOut{Request: id, Name: name, SHA256: sha256Hex(data), Data: data}, nil
}

// readBounded reads a regular file of at most max bytes.
func readBounded(path string, max int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !st.Mode().IsRegular() || st.Size() > max {
		return nil, fmt.Errorf("ceremony output %s: not a regular file of at most %d bytes", path, max)
	}
	return io.ReadAll(io.LimitReader(f, max))
}

type executeIn struct {
	Request string `json:"request"`
}

// outputFile is one file a ceremony wrote.
type outputFile struct {
	Name   string `json:"name"`             // what ceremonyFetch takes
	Path   string `json:"path"`             // on the daemon's host, readable by its user only
	SHA256 string `json:"sha256"`           //
	Holder string `json:"holder,omitempty"` // the only officer who may fetch it (a share file)
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
		r, aps, a, col, err := s.claim(ctx, c, id, kind)
		detail := fmt.Sprintf("request %s sha256 %s executed by %s", id, r.Hash(), o.Name)
		if err != nil {
			detail = "request " + id
		}
		// The decision, durable before the token is touched.
		if err := s.recorded(ctx, rq, op, detail, err); err != nil {
			if col != nil {
				col.Abort()
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
			err = s.runBackup(ctx, c, r, col, t, out, dir)
		case ceremony.KindRestore:
			err = s.runRestore(ctx, c, r, a, col, t, out)
		case ceremony.KindRotate:
			err = s.runRotate(ctx, r, t, out)
		case ceremony.KindRetire:
			err = s.runRetire(ctx, r, t, out)
		}
		if col != nil {
			col.Abort() // spent or not, the shares are cleared
		}
		if err == nil {
			err = s.writeTranscript(ctx, c, t, out, dir)
		}
		if err == nil {
			c.mu.Lock()
			files := map[string]string{}
			for _, f := range append(out.Outputs, out.Transcript) {
				files[f.Name] = f.Holder
			}
			c.outputs[r.ID] = executed{dir: dir, files: files}
			c.mu.Unlock()
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

// claim checks that request id of kind has its quorum and, for a backup or
// a restore, enough shares; that what the officers approved still
// describes the token (stillApproved); then consumes it. Below the shares'
// threshold the request stays pending (more officers may still submit)
// and nothing is touched.
func (s *Server) claim(ctx context.Context, c *Ceremonies, id, kind string) (ceremony.Request, []ceremony.Approval, ask, *ceremony.Collector, error) {
	var a ask
	r, aps, err := c.approvals.Get(id)
	if err != nil {
		return r, nil, a, nil, err
	}
	if r.Kind != kind {
		return r, nil, a, nil, fmt.Errorf("%w: no pending %s request %q", ceremony.ErrUnknownRequest, kind, id)
	}
	col := c.collector(id)
	c.mu.Lock()
	a, ok := c.asks[id]
	c.mu.Unlock()
	if !ok {
		return r, nil, a, nil, fmt.Errorf("%w: %q", ceremony.ErrUnknownRequest, id)
	}
	if len(aps) >= r.Quorum && col != nil && col.Count() < col.Set().Threshold {
		return r, nil, a, nil, fmt.Errorf("%w: %d of %d %ss submitted (each holder: custodyctl ceremony share submit %s FILE)", ceremony.ErrNotEnoughShares, col.Count(), col.Set().Threshold, col.Set().Kind, id)
	}
	if len(aps) >= r.Quorum {
		if err := s.stillApproved(ctx, c, r, a); err != nil {
			return r, nil, a, nil, err
		}
	}
	if r, aps, err = c.approvals.Consume(id, kind); err != nil {
		return r, nil, a, nil, err
	}
	c.mu.Lock()
	delete(c.shares, id)
	delete(c.asks, id)
	c.mu.Unlock()
	return r, aps, a, col, nil
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

func (s *Server) runBackup(ctx context.Context, c *Ceremonies, r ceremony.Request, soPIN *ceremony.Collector, t *ceremony.Transcript, out *executeOut, dir string) error {
	n, _ := strconv.Atoi(r.Params["n"])
	if n < r.Quorum || n > len(c.officers().List) {
		return fmt.Errorf("%w: n %d", ceremony.ErrFormat, n)
	}
	for _, who := range soPIN.Submitters() {
		t.Participants = append(t.Participants, [2]string{who, "so-pin-holder"})
	}
	signer, _, err := auditlog.EnsureDeviceSigner(ctx, c.Device, c.LogOrigin, c.LogKeyLabel, s.Now())
	if err != nil {
		return err
	}
	holders := c.officers().List[:n]
	res, err := ceremony.Backup(ctx, c.Device, r.Params["key_label"], soPIN, holders, r.Quorum, signer, s.Now())
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
		out.Outputs = append(out.Outputs, outputFile{Name: name, Path: p, SHA256: sum, Holder: holder})
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
	out.Fingerprints = []fingerprintView{fp}
	t.Fingerprints = append(t.Fingerprints, [2]string{fp.Label, fp.SHA256})
	return nil
}

func (s *Server) runRestore(ctx context.Context, c *Ceremonies, r ceremony.Request, a ask, col *ceremony.Collector, t *ceremony.Transcript, out *executeOut) error {
	m := a.manifest
	for _, who := range col.Submitters() {
		t.Participants = append(t.Participants, [2]string{who, "submitter"})
	}
	if err := ceremony.Restore(ctx, c.Device, m, col); err != nil {
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
	t.Outputs = append(t.Outputs, [2]string{"manifest.json", r.Params["manifest_sha256"]})
	t.Deviations = append(t.Deviations, "manifest signed by "+a.signer)
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
	if err := mkdirPrivate(dir); err != nil {
		return err
	}
	p := filepath.Join(dir, "transcript.txt")
	if err := durable.Create(p, signed, 0o600); err != nil {
		return fmt.Errorf("ceremony output: %w", err)
	}
	out.Transcript = outputFile{Name: "transcript.txt", Path: p, SHA256: sha256Hex(signed)}
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

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
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
