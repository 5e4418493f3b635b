package ceremony

import (
	"bufio"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Ceremony kinds.
const (
	KindGenesis = "genesis"
	KindBackup  = "backup"
	KindRestore = "restore"
	KindRotate  = "rotate"
	KindRetire  = "retire"
)

var kinds = []string{KindGenesis, KindBackup, KindRestore, KindRotate, KindRetire}

// Request is a ceremony step waiting for M officers' approvals. Its
// canonical text (Canonical) is what officers read, and its SHA-256 (Hash)
// is what they approve, together with the nonce.
type Request struct {
	ID        string            // 16 random bytes, hex
	Kind      string            // KindGenesis, KindBackup, KindRestore, KindRotate
	Params    map[string]string // keys [a-z][a-z0-9_]{0,31}, values printable without newlines, at most 1024 bytes
	Nonce     string            // 32 random bytes, hex
	Requester string            // officer name
	Quorum    int               // M: distinct approvers needed, requester excluded
	NotBefore time.Time         // UTC, seconds
	NotAfter  time.Time         // approvals after this instant are refused
}

const requestMagic = "custody ceremony request v1"

// Canonical is the request's canonical text: one field per line, params
// sorted by key, times in RFC 3339 UTC. Hash is SHA-256 of exactly this.
func (r Request) Canonical() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s\nid %s\nkind %s\n", requestMagic, r.ID, r.Kind)
	keys := make([]string, 0, len(r.Params))
	for k := range r.Params {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		fmt.Fprintf(&b, "param %s %s\n", k, r.Params[k])
	}
	fmt.Fprintf(&b, "nonce %s\nrequester %s\nquorum %d\nnot-before %s\nnot-after %s\n", r.Nonce, r.Requester, r.Quorum,
		r.NotBefore.UTC().Format(time.RFC3339), r.NotAfter.UTC().Format(time.RFC3339))
	return b.String()
}

// Hash is SHA-256 of Canonical, hex.
func (r Request) Hash() string {
	h := sha256.Sum256([]byte(r.Canonical()))
	return hex.EncodeToString(h[:])
}

var (
	paramKeyRe = regexp.MustCompile(`^[a-z][a-z0-9_]{0,31}$`)
	hexIDRe    = regexp.MustCompile(`^[0-9a-f]{32}$`)
	hexNonceRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// maxParamValue bounds a param's value: room for a fingerprint in words.
const maxParamValue = 1024

func validParamValue(v string) bool {
	if len(v) > maxParamValue {
		return false
	}
	for _, c := range v {
		if c < 0x20 || c == 0x7f {
			return false
		}
	}
	return true
}

func (r Request) validate() error {
	switch {
	case !hexIDRe.MatchString(r.ID):
		return fmt.Errorf("bad id")
	case !slices.Contains(kinds, r.Kind):
		return fmt.Errorf("unknown kind %q", r.Kind)
	case !hexNonceRe.MatchString(r.Nonce):
		return fmt.Errorf("bad nonce")
	case !officerNameRe.MatchString(r.Requester):
		return fmt.Errorf("bad requester")
	case r.Quorum < 1 || r.Quorum > 255:
		return fmt.Errorf("quorum %d out of 1..255", r.Quorum)
	case !r.NotAfter.After(r.NotBefore):
		return fmt.Errorf("empty window")
	case len(r.Params) > 32:
		return fmt.Errorf("too many params")
	}
	for k, v := range r.Params {
		if !paramKeyRe.MatchString(k) || !validParamValue(v) {
			return fmt.Errorf("bad param %q", k)
		}
	}
	return nil
}

// ParseRequest parses a request's canonical text strictly: the exact
// field order of Canonical, nothing else; re-encoding gives the same bytes.
func ParseRequest(text string) (Request, error) {
	bad := func(f string, a ...any) (Request, error) {
		return Request{}, fmt.Errorf("%w: request: %s", ErrFormat, fmt.Sprintf(f, a...))
	}
	if len(text) > 16<<10 {
		return bad("too large")
	}
	sc := bufio.NewScanner(strings.NewReader(text))
	var lines []string
	for sc.Scan() {
		lines = append(lines, sc.Text())
	}
	if len(lines) < 8 || lines[0] != requestMagic {
		return bad("not a %q", requestMagic)
	}
	field := func(i int, name string) (string, bool) {
		v, ok := strings.CutPrefix(lines[i], name+" ")
		return v, ok
	}
	r := Request{Params: map[string]string{}}
	var ok bool
	if r.ID, ok = field(1, "id"); !ok {
		return bad("line 2: want id")
	}
	if r.Kind, ok = field(2, "kind"); !ok {
		return bad("line 3: want kind")
	}
	i := 3
	for ; i < len(lines); i++ {
		p, ok := field(i, "param")
		if !ok {
			break
		}
		k, v, ok := strings.Cut(p, " ")
		if !ok {
			return bad("line %d: param without value", i+1)
		}
		if _, dup := r.Params[k]; dup {
			return bad("line %d: duplicate param %q", i+1, k)
		}
		r.Params[k] = v
	}
	if len(lines) != i+5 {
		return bad("want nonce, requester, quorum, not-before, not-after after the params")
	}
	var q, nb, na string
	if r.Nonce, ok = field(i, "nonce"); !ok {
		return bad("want nonce")
	}
	if r.Requester, ok = field(i+1, "requester"); !ok {
		return bad("want requester")
	}
	if q, ok = field(i+2, "quorum"); !ok {
		return bad("want quorum")
	}
	n, err := strconv.Atoi(q)
	if err != nil {
		return bad("quorum: %v", err)
	}
	r.Quorum = n
	if nb, ok = field(i+3, "not-before"); !ok {
		return bad("want not-before")
	}
	if na, ok = field(i+4, "not-after"); !ok {
		return bad("want not-after")
	}
	if r.NotBefore, err = time.Parse(time.RFC3339, nb); err != nil {
		return bad("not-before: %v", err)
	}
	if r.NotAfter, err = time.Parse(time.RFC3339, na); err != nil {
		return bad("not-after: %v", err)
	}
	if err := r.validate(); err != nil {
		return bad("%v", err)
	}
	if r.Canonical() != text {
		return bad("not in canonical form")
	}
	return r, nil
}

// Approval is one officer's approval of a request.
type Approval struct {
	Officer string
	Time    time.Time
}

type pending struct {
	req       Request
	approvals []Approval
	used      bool
}

// Approvals holds the pending requests of one daemon, in memory: a restart
// forgets them. Safe for concurrent use.
type Approvals struct {
	Now func() time.Time // nil = time.Now
	// PerRequester bounds the requests one officer may have pending at
	// once (0 = DefaultPerRequester), so one officer cannot fill the table.
	PerRequester int

	mu   sync.Mutex
	reqs map[string]*pending
}

// MaxPending bounds the requests held at once.
const MaxPending = 64

// DefaultPerRequester is Approvals.PerRequester's default.
const DefaultPerRequester = 4

func (a *Approvals) now() time.Time {
	if a.Now != nil {
		return a.Now().UTC()
	}
	return time.Now().UTC()
}

// Create opens a request of kind by requester, needing quorum distinct
// approvals from other officers within window from now.
func (a *Approvals) Create(requester Officer, kind string, params map[string]string, quorum int, window time.Duration) (Request, error) {
	var id [16]byte
	var nonce [32]byte
	rand.Read(id[:])
	rand.Read(nonce[:])
	now := a.now().Truncate(time.Second)
	r := Request{ID: hex.EncodeToString(id[:]), Kind: kind, Params: params, Nonce: hex.EncodeToString(nonce[:]),
		Requester: requester.Name, Quorum: quorum, NotBefore: now, NotAfter: now.Add(window)}
	if r.Params == nil {
		r.Params = map[string]string{}
	}
	if err := r.validate(); err != nil {
		return Request{}, fmt.Errorf("%w: request: %v", ErrFormat, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.reqs == nil {
		a.reqs = map[string]*pending{}
	}
	for id, p := range a.reqs { // drop expired requests
		if now.After(p.req.NotAfter) || p.used {
			delete(a.reqs, id)
		}
	}
	limit := a.PerRequester
	if limit <= 0 {
		limit = DefaultPerRequester
	}
	mine := 0
	for _, p := range a.reqs {
		if p.req.Requester == r.Requester {
			mine++
		}
	}
	if mine >= limit {
		return Request{}, fmt.Errorf("%w: %s has %d requests pending (at most %d); let them expire or run them", ErrTooManyPending, r.Requester, mine, limit)
	}
	if len(a.reqs) >= MaxPending {
		return Request{}, fmt.Errorf("%w: %d requests pending", ErrTooManyPending, len(a.reqs))
	}
	a.reqs[r.ID] = &pending{req: r}
	return r, nil
}

// Get returns a pending request and its approvals so far.
func (a *Approvals) Get(id string) (Request, []Approval, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.reqs[id]
	if !ok || p.used {
		return Request{}, nil, fmt.Errorf("%w: %q", ErrUnknownRequest, id)
	}
	return p.req, slices.Clone(p.approvals), nil
}

// Approve records officer's approval of request id, which must name the
// request's hash and nonce (compared in constant time). Refused: the
// requester (ErrSelfApproval), another hash or nonce (ErrRequestMismatch),
// outside [NotBefore, NotAfter] (ErrExpired), a second approval by the same
// officer (ErrDuplicateApproval). It returns the number of approvals.
func (a *Approvals) Approve(officer Officer, id, hash, nonce string) (int, error) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.reqs[id]
	if !ok || p.used {
		return 0, fmt.Errorf("%w: %q", ErrUnknownRequest, id)
	}
	if subtle.ConstantTimeCompare([]byte(hash), []byte(p.req.Hash())) != 1 ||
		subtle.ConstantTimeCompare([]byte(nonce), []byte(p.req.Nonce)) != 1 {
		return len(p.approvals), fmt.Errorf("%w: request %s", ErrRequestMismatch, id)
	}
	if now.Before(p.req.NotBefore) || now.After(p.req.NotAfter) {
		return len(p.approvals), fmt.Errorf("%w: request %s closed at %s", ErrExpired, id, p.req.NotAfter.Format(time.RFC3339))
	}
	if officer.Name == p.req.Requester {
		return len(p.approvals), fmt.Errorf("%w: %s requested %s", ErrSelfApproval, officer.Name, id)
	}
	for _, ap := range p.approvals {
		if ap.Officer == officer.Name {
			return len(p.approvals), fmt.Errorf("%w: %s", ErrDuplicateApproval, officer.Name)
		}
	}
	p.approvals = append(p.approvals, Approval{Officer: officer.Name, Time: now})
	return len(p.approvals), nil
}

// Consume marks request id, of kind, as executed and returns it with its
// approvals. It succeeds once, only with Quorum approvals and inside the
// window (ErrNotApproved, ErrExpired, ErrUnknownRequest).
func (a *Approvals) Consume(id, kind string) (Request, []Approval, error) {
	now := a.now()
	a.mu.Lock()
	defer a.mu.Unlock()
	p, ok := a.reqs[id]
	if !ok || p.used || p.req.Kind != kind {
		return Request{}, nil, fmt.Errorf("%w: no pending %s request %q", ErrUnknownRequest, kind, id)
	}
	if now.After(p.req.NotAfter) {
		return Request{}, nil, fmt.Errorf("%w: request %s closed at %s", ErrExpired, id, p.req.NotAfter.Format(time.RFC3339))
	}
	if len(p.approvals) < p.req.Quorum {
		return Request{}, nil, fmt.Errorf("%w: %d of %d approvals", ErrNotApproved, len(p.approvals), p.req.Quorum)
	}
	p.used = true
	return p.req, slices.Clone(p.approvals), nil
}
