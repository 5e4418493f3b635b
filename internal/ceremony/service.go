package ceremony

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/mod/sumdb/note"

	"custody/internal/auditlog"
	"custody/internal/device"
	"custody/internal/keys"
	"custody/internal/safefile"
)

// Service runs the escrow key ceremonies of one daemon (docs/ceremonies.md):
// an officer creates a request (kind, a few inputs, M, window); the service
// writes its params, which name the key, the token and the effect
// (effects.go); M other officers approve its hash and nonce; any officer
// then executes it once. A backup also needs officers' SO PIN shares (the
// daemon has no SO PIN of its own), a restore their shares of the backup's
// KEK, before it runs. Outputs are 0600 files in 0700 directories under
// OutputDir; officers fetch theirs (Fetch).
//
// The service owns the pending requests, their approvals, what each
// requester chose, the submitted shares and the list of executed outputs.
// They live in memory: a restart forgets them (a quorum is gathered in one
// sitting; the files stay in OutputDir).
//
// It does not authenticate or record: the caller (package server) maps a
// peer to an Officer with Officers().ByUID after its policy check, and
// records every step in the access log. Executing is two steps so that the
// decision is durable before the token is touched: Claim checks and
// consumes the request and touches nothing; the caller records the claim;
// only then does Run drive the token (or Claim.Abort, if recording
// failed).
//
// A Service is safe for concurrent use.
type Service struct {
	sopin     *SOPINRecord
	trusted   note.Verifiers
	minM      map[string]int
	outDir    string
	dev       ServiceDevice
	keys      Keys
	logOrigin string
	logLabel  string
	now       func() time.Time

	current   atomic.Pointer[Officers]
	approvals Approvals
	mu        sync.Mutex
	asks      map[string]ask        // by request id: what the requester chose
	shares    map[string]*Collector // by request id: a backup's SO PIN shares, a restore's KEK shares
	outputs   map[string]executed   // executed requests' files
}

// ServiceDevice is what ceremonies need of the token (package hsm's Token
// implements it): the backup and restore operations, the access log's
// signing key, and the token's label and serial for transcripts.
type ServiceDevice interface {
	Device
	auditlog.KeyStore
	// TokenID returns the token's label and serial number.
	TokenID() (label, serial string)
}

// Keys is what ceremonies need of the daemon's key registry
// (*keys.Registry implements it).
type Keys interface {
	GenesisDone(ctx context.Context) (bool, error)
	Genesis(ctx context.Context, now time.Time, how string) ([]keys.Version, error)
	MarkGenesis(ctx context.Context, now time.Time, how string) error
	Adopt(info device.KeyInfo) error
	Escrow() (keys.Version, error)
	EscrowVersion(n uint32) (keys.Version, error)
	EscrowVersions() []keys.Version
	Signer() (*keys.Signer, error)
	RotateEscrow(ctx context.Context, now time.Time) (keys.Version, error)
	Retire(ctx context.Context, id string, escrow bool, n uint32, now time.Time, by string) (keys.Version, error)
}

// ServiceConfig configures NewService.
type ServiceConfig struct {
	Officers *Officers // at start; ReplaceOfficers changes them
	// SOPIN is the public record of this token's SO PIN shares (custodyd
	// token init --officers); nil: backups are refused (ErrNoSOPIN).
	SOPIN *SOPINRecord
	// TrustedBackupSigners are the daemons' log keys whose backup manifests
	// a restore accepts; empty: every restore is refused.
	TrustedBackupSigners note.Verifiers
	// MinApprovals is the least M per kind; kinds absent get
	// DefaultMinApprovals. Restore and retire are never below 2.
	MinApprovals map[string]int
	// PendingPerOfficer bounds one officer's pending requests (0 = 4).
	PendingPerOfficer int
	OutputDir         string // transcripts, manifests and share files
	Device            ServiceDevice
	Keys              Keys
	LogOrigin         string           // the access log's origin: the transcript signer's name
	LogKeyLabel       string           // the access log's Ed25519 key on the token
	Now               func() time.Time // nil = time.Now
}

// NewService returns the ceremonies of cfg. Officers, Device and Keys are
// required.
func NewService(cfg ServiceConfig) (*Service, error) {
	if cfg.Officers == nil || cfg.Device == nil || cfg.Keys == nil {
		return nil, errors.New("ceremony: a ceremony service needs officers, a device and a key registry")
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	s := &Service{sopin: cfg.SOPIN, trusted: cfg.TrustedBackupSigners, minM: cfg.MinApprovals, outDir: cfg.OutputDir,
		dev: cfg.Device, keys: cfg.Keys, logOrigin: cfg.LogOrigin, logLabel: cfg.LogKeyLabel, now: now,
		asks: map[string]ask{}, shares: map[string]*Collector{}, outputs: map[string]executed{}}
	s.current.Store(cfg.Officers)
	s.approvals.Now = now
	s.approvals.PerRequester = cfg.PendingPerOfficer
	return s, nil
}

// DefaultMinApprovals is the least number of approvals (besides the
// requester) per kind. Restoring a key and destroying one never take
// fewer than 2 (config.Validate refuses lower floors).
var DefaultMinApprovals = map[string]int{
	KindGenesis: 2, KindBackup: 2, KindRestore: 2,
	KindRotate: 1, KindRetire: 2,
}

// minApprovals returns the floor for kind.
func (s *Service) minApprovals(kind string) int {
	if n, ok := s.minM[kind]; ok {
		return n
	}
	return DefaultMinApprovals[kind]
}

// Limits of a request's window.
const (
	MinWindow     = time.Minute
	MaxWindow     = 24 * time.Hour
	DefaultWindow = time.Hour
)

// Officers returns the officers now in force.
func (s *Service) Officers() *Officers { return s.current.Load() }

// ReplaceOfficers puts offs in force (custodyd does it on SIGHUP, from the
// officers file). If they differ from the officers in force, every pending
// request is cancelled, its shares included, because its quorum was being
// gathered among the old officers; the cancelled ids are returned.
func (s *Service) ReplaceOfficers(offs *Officers) (changed bool, cancelled []string) {
	if offs == nil || s.Officers().Equal(offs) {
		return false, nil
	}
	s.current.Store(offs)
	cancelled = s.approvals.CancelPending()
	s.mu.Lock()
	for _, id := range cancelled {
		s.forgetLocked(id)
	}
	s.mu.Unlock()
	return true, cancelled
}

// forgetLocked drops what request id gathered (shares are cleared).
func (s *Service) forgetLocked(id string) {
	if col := s.shares[id]; col != nil {
		col.Abort()
	}
	delete(s.shares, id)
	delete(s.asks, id)
}

// collector returns the shares request id gathers: KEK shares for a
// restore, SO PIN shares for a backup; nil for other kinds.
func (s *Service) collector(id string) *Collector {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.shares[id]
}

// token returns the token's label and serial.
func (s *Service) token() (label, serial string) { return s.dev.TokenID() }

// Input is what a requester chooses.
type Input struct {
	Kind     string
	Params   map[string]string // backup: key_label; retire: version, rewrapped_count
	M        int
	N        int    // backup: shares to make (the first N officers of the file); 0 = every officer
	Window   string // Go duration; "" = DefaultWindow
	Manifest string // restore: the backup manifest (its JSON text)
}

// Pending is a request with what it has gathered so far.
type Pending struct {
	Request   Request
	Approvals []Approval
	Shares    int    // backup: SO PIN shares, restore: KEK shares submitted
	ShareKind string // "" for kinds that take no shares
	Needed    int    // shares needed
}

func (s *Service) pending(r Request, aps []Approval) Pending {
	p := Pending{Request: r, Approvals: aps}
	if col := s.collector(r.ID); col != nil {
		p.Shares, p.ShareKind, p.Needed = col.Count(), col.Set().Kind.String(), col.Set().Threshold
	}
	return p
}

// Request creates a request of o's: it checks in, computes the params the
// officers will approve from the token and the registry as they are now,
// and opens the approval window. Errors: ErrInvalidInput,
// ErrRetireUnconfirmed, ErrTooManyPending, and whatever the params refuse
// (ErrNoSOPIN, ErrNotEscrowLabel, ErrUntrustedManifest, keys and device
// errors).
func (s *Service) Request(ctx context.Context, o Officer, in Input) (Pending, error) {
	window := DefaultWindow
	if in.Window != "" {
		d, err := time.ParseDuration(in.Window)
		if err != nil || d < MinWindow || d > MaxWindow {
			return Pending{}, badInput("window: %q is not a duration from %s to %s", in.Window, MinWindow, MaxWindow)
		}
		window = d
	}
	a, err := s.parseAsk(in)
	if err != nil {
		return Pending{}, err
	}
	others := len(s.Officers().List) - 1
	if floor := s.minApprovals(in.Kind); in.M < floor || in.M > others {
		return Pending{}, badInput("m: %d approvals; a %s request needs %d..%d (the configured floor is %d, and %d other officers exist)", in.M, in.Kind, floor, others, floor, others)
	}
	params, err := s.params(ctx, a)
	if err != nil {
		return Pending{}, err
	}
	r, err := s.approvals.Create(o, in.Kind, params, in.M, window)
	if err != nil {
		return Pending{}, err
	}
	s.mu.Lock()
	for id := range s.asks { // forget what requests that are gone gathered
		if _, _, err := s.approvals.Get(id); err != nil {
			s.forgetLocked(id)
		}
	}
	s.asks[r.ID] = a
	switch in.Kind {
	case KindRestore:
		s.shares[r.ID] = NewCollector(a.manifest.ShareSet())
	case KindBackup:
		s.shares[r.ID] = NewCollector(s.sopin.ShareSet())
	}
	s.mu.Unlock()
	return s.pending(r, nil), nil
}

// Get returns request id (pending or not yet forgotten), or
// ErrUnknownRequest.
func (s *Service) Get(id string) (Pending, error) {
	r, aps, err := s.approvals.Get(id)
	if err != nil {
		return Pending{}, err
	}
	return s.pending(r, aps), nil
}

// Approve records o's approval of request id, which must name its hash
// and nonce; it returns the number of approvals so far.
func (s *Service) Approve(o Officer, id, hash, nonce string) (int, error) {
	return s.approvals.Approve(o, id, hash, nonce)
}

// EscrowVersion is one escrow key version in a Status.
type EscrowVersion struct {
	keys.Version
	State string // active, decrypt-only, destroyed
}

// Status is what an officer sees of the ceremonies.
type Status struct {
	Genesis        bool
	SOPIN          *SOPINRecord // nil: not split, backups are refused
	EscrowVersions []EscrowVersion
	Pending        []Pending
}

// Status returns whether genesis ran, the SO PIN record, the escrow key
// versions and the pending requests.
func (s *Service) Status(ctx context.Context) (Status, error) {
	g, err := s.keys.GenesisDone(ctx)
	if err != nil {
		return Status{}, err
	}
	out := Status{Genesis: g, SOPIN: s.sopin}
	vs := s.keys.EscrowVersions()
	for i, v := range vs {
		st := "decrypt-only"
		switch {
		case !v.Destroyed.IsZero():
			st = "destroyed"
		case i == len(vs)-1:
			st = "active"
		}
		out.EscrowVersions = append(out.EscrowVersions, EscrowVersion{Version: v, State: st})
	}
	for _, id := range s.approvals.Pending() {
		if r, aps, err := s.approvals.Get(id); err == nil {
			out.Pending = append(out.Pending, s.pending(r, aps))
		}
	}
	return out, nil
}

// Submitted describes a submitted share: as much as was parsed, even when
// the submission failed.
type Submitted struct {
	Parsed   bool // Kind, Index and BackupID are the share's
	Kind     ShareKind
	Index    int
	BackupID string
	Count    int      // shares gathered so far
	Set      ShareSet // the set the request gathers
}

// SubmitShare keeps o's decrypted share text for request id: a share of
// the backup's KEK for a restore, an SO PIN share for a backup. The share
// must name o (ErrNotShareHolder); the request must take shares and still
// be open (ErrUnknownRequest, ErrExpired). text is not kept past the call:
// the caller clears it.
func (s *Service) SubmitShare(o Officer, id string, text []byte) (Submitted, error) {
	var sub Submitted
	sh, err := ParseShare(text)
	clear(sh.Value)
	if err != nil {
		return sub, err
	}
	sub.Parsed, sub.Kind, sub.Index, sub.BackupID = true, sh.Kind, sh.Index, sh.BackupID
	if sh.Officer != o.Name {
		return sub, inputErrorf(ErrNotShareHolder, "share %d is %s's; each officer submits their own share as their own Unix user", sh.Index, sh.Officer)
	}
	r, _, err := s.approvals.Get(id)
	if err != nil {
		return sub, err
	}
	col := s.collector(id)
	switch {
	case col == nil:
		return sub, fmt.Errorf("%w: %s is a %s request, which takes no shares", ErrUnknownRequest, id, r.Kind)
	case s.now().After(r.NotAfter):
		return sub, fmt.Errorf("%w: request %s closed at %s", ErrExpired, id, r.NotAfter.Format(time.RFC3339))
	}
	sub.Set = col.Set()
	sub.Count, err = col.Submit(o.Name, text)
	return sub, err
}

// executed is what a request wrote: file name → the officer who may fetch
// it ("" = any officer).
type executed struct {
	dir   string
	files map[string]string
}

// maxOutputFile bounds a fetched file (manifests and share files are a few KiB).
const maxOutputFile = 1 << 20

// Fetch returns output file name of executed request id for o: a share
// file only if it is o's (ErrNotShareHolder), the manifest and the
// transcript whatever share o holds. Only requests executed since the
// daemon started are known (ErrUnknownRequest).
func (s *Service) Fetch(o Officer, id, name string) ([]byte, error) {
	s.mu.Lock()
	ex, ok := s.outputs[id]
	s.mu.Unlock()
	holder, known := ex.files[name]
	switch {
	case !ok:
		return nil, fmt.Errorf("%w: no executed request %q in this daemon's memory (after a restart, the daemon's operator copies the files from ceremony.output_dir)", ErrUnknownRequest, id)
	case !known:
		return nil, fmt.Errorf("%w: request %s wrote no %q", ErrUnknownRequest, id, name)
	case holder != "" && holder != o.Name:
		return nil, inputErrorf(ErrNotShareHolder, "%s is %s's share file; each officer fetches only their own", name, holder)
	}
	return safefile.Read(filepath.Join(ex.dir, name), maxOutputFile)
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
