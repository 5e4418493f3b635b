package orders

import (
	"bytes"
	"crypto/ed25519"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"time"
	"unicode"
	"unicode/utf8"
)

// FormatVersion is the version of the order body and of its signed
// encoding that `custodyctl order create` writes. Version 2 adds the
// optional, signed Supersedes field. Bodies of version 1 (no Supersedes)
// are still accepted, so orders signed before version 2 keep working; a
// body with any other version is malformed.
const FormatVersion = 2

// minFormatVersion is the oldest body version the parser accepts.
const minFormatVersion = 1

// signedPrefix returns the domain-separation prefix of a version's signed
// message ("custody court order v2\n"): it separates order signatures from
// any other Ed25519 signature a signer's key might make, and a signature of
// one format version from every other.
func signedPrefix(version int) string { return "custody court order v" + strconv.Itoa(version) + "\n" }

// Limits of an order body.
const (
	MaxScopeItems  = 1000 // transactions plus jobs
	MaxRecordBytes = 256 << 10
	MaxSignatures  = 16
	MaxUsesLimit   = 1_000_000
	maxTextLength  = 256 // authority
)

var (
	// idRe is the syntax of an order id: it is a path segment in Vault.
	idRe = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`)
	// nameRe is the syntax of principal names, signer names and purposes
	// (the policy's identifier syntax).
	nameRe = regexp.MustCompile(`^[a-z][a-z0-9_-]{0,63}$`)
	// txRe is envelope.ValidateID's syntax for transaction and job ids.
	txRe  = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$`)
	hexRe = regexp.MustCompile(`^[0-9a-f]{64}$`)
)

// ValidID reports whether id may name an order.
func ValidID(id string) bool { return idRe.MatchString(id) }

// Order is the body of a court order: what the signers sign.
type Order struct {
	Version        int       `json:"version"`              // FormatVersion
	ID             string    `json:"id"`                   // the record's path segment
	Supersedes     string    `json:"supersedes,omitempty"` // version 2: the id of the order this one amends; counts only once that order is revoked
	Auditor        string    `json:"auditor"`              // a principal name of the daemon's policy
	Scope          Scope     `json:"scope"`                // which transactions
	Purpose        string    `json:"purpose"`              // what the disclosure is for; the request must name it
	DocumentSHA256 string    `json:"document_sha256"`      // lowercase hex SHA-256 of the order document
	Authority      string    `json:"authority"`            // issuing court or authority
	NotBefore      time.Time `json:"not_before"`           // RFC 3339, UTC, whole seconds
	NotAfter       time.Time `json:"not_after"`            // exclusive
	MaxUses        int       `json:"max_uses"`             // 1..MaxUsesLimit audit decrypts
}

// Scope says which transactions an order covers: a transaction is covered
// if its id is in Transactions, or its job id is in Jobs, or its envelope's
// created-at is in [CreatedFrom, CreatedUntil). At least one of the three
// must be set; a time range needs both ends.
type Scope struct {
	Transactions []string   `json:"transactions,omitempty"`
	Jobs         []string   `json:"jobs,omitempty"`
	CreatedFrom  *time.Time `json:"created_from,omitempty"`
	CreatedUntil *time.Time `json:"created_until,omitempty"`
}

// Covers reports whether the scope covers a transaction.
func (s Scope) Covers(txID, jobID string, createdAt time.Time) bool {
	if txID != "" && slices.Contains(s.Transactions, txID) {
		return true
	}
	if jobID != "" && slices.Contains(s.Jobs, jobID) {
		return true
	}
	if s.CreatedFrom != nil && s.CreatedUntil != nil {
		return !createdAt.Before(*s.CreatedFrom) && createdAt.Before(*s.CreatedUntil)
	}
	return false
}

// Signature is one signer's Ed25519 signature over Order.SignedMessage.
type Signature struct {
	Signer    string `json:"signer"`    // a name in Config.Signers
	Signature string `json:"signature"` // standard base64 of 64 bytes
}

// Record is what the KV entry <orders_path>/<id> holds.
type Record struct {
	Order      Order       `json:"order"`
	Signatures []Signature `json:"signatures"`
}

// Validate checks every rule of an order body. It returns nil or an error
// matching ErrMalformed that names the field.
func (o *Order) Validate() error {
	bad := func(field, format string, args ...any) error {
		return fmt.Errorf("%w: %s: %s", ErrMalformed, field, fmt.Sprintf(format, args...))
	}
	if o.Version < minFormatVersion || o.Version > FormatVersion {
		return bad("version", "%d, want %d (or %d for an order made before amendments)", o.Version, FormatVersion, minFormatVersion)
	}
	if !idRe.MatchString(o.ID) {
		return bad("id", "%q: 1-128 of [A-Za-z0-9._-], starting with a letter or digit", o.ID)
	}
	if o.Supersedes != "" {
		switch {
		case o.Version < 2:
			return bad("supersedes", "needs format version 2")
		case !idRe.MatchString(o.Supersedes):
			return bad("supersedes", "%q is not an order id", o.Supersedes)
		case o.Supersedes == o.ID:
			return bad("supersedes", "an order cannot supersede itself")
		}
	}
	if !nameRe.MatchString(o.Auditor) {
		return bad("auditor", "%q is not a principal name", o.Auditor)
	}
	if !nameRe.MatchString(o.Purpose) {
		return bad("purpose", "%q: 1-64 of [a-z0-9_-], starting with a letter", o.Purpose)
	}
	if !hexRe.MatchString(o.DocumentSHA256) {
		return bad("document_sha256", "want 64 lowercase hex digits")
	}
	if o.Authority == "" || len(o.Authority) > maxTextLength || !printable(o.Authority) {
		return bad("authority", "required, 1-%d printable characters", maxTextLength)
	}
	for _, t := range []struct {
		name string
		v    *time.Time
	}{{"not_before", &o.NotBefore}, {"not_after", &o.NotAfter}, {"scope.created_from", o.Scope.CreatedFrom}, {"scope.created_until", o.Scope.CreatedUntil}} {
		if t.v != nil && !canonicalTime(*t.v) {
			return bad(t.name, "want RFC 3339 in UTC, whole seconds, years 1970-9999")
		}
	}
	if !o.NotBefore.Before(o.NotAfter) {
		return bad("not_after", "must be after not_before")
	}
	if o.MaxUses < 1 || o.MaxUses > MaxUsesLimit {
		return bad("max_uses", "%d, want 1..%d", o.MaxUses, MaxUsesLimit)
	}
	s := &o.Scope
	if len(s.Transactions)+len(s.Jobs) > MaxScopeItems {
		return bad("scope", "more than %d transactions and jobs", MaxScopeItems)
	}
	for name, ids := range map[string][]string{"scope.transactions": s.Transactions, "scope.jobs": s.Jobs} {
		if ids != nil && len(ids) == 0 {
			return bad(name, "empty list: leave it out")
		}
		for i, id := range ids {
			if !txRe.MatchString(id) {
				return bad(fmt.Sprintf("%s[%d]", name, i), "%q is not a valid id", id)
			}
		}
		if !slices.IsSorted(ids) || len(slices.Compact(slices.Clone(ids))) != len(ids) {
			return bad(name, "must be sorted and without duplicates")
		}
	}
	if (s.CreatedFrom == nil) != (s.CreatedUntil == nil) {
		return bad("scope", "created_from and created_until go together")
	}
	if s.CreatedFrom != nil && !s.CreatedFrom.Before(*s.CreatedUntil) {
		return bad("scope.created_until", "must be after created_from")
	}
	if len(s.Transactions) == 0 && len(s.Jobs) == 0 && s.CreatedFrom == nil {
		return bad("scope", "empty: name transactions, jobs or a created_from/created_until range")
	}
	return nil
}

// printable reports whether s is text a signer can read as it is: graphic
// characters and the ASCII space only. C0 and C1 controls (an escape
// sequence could redraw the signer's terminal and hide a field), format
// characters such as bidirectional overrides, other spaces and invalid
// UTF-8 (U+FFFD) are refused.
func printable(s string) bool {
	for _, r := range s {
		if r == utf8.RuneError || !unicode.IsPrint(r) {
			return false
		}
	}
	return true
}

func canonicalTime(t time.Time) bool {
	return t.Location() == time.UTC && t.Nanosecond() == 0 && t.Year() >= 1970 && t.Year() <= 9999
}

// Normalize sorts and de-duplicates the scope lists and converts the times
// to UTC whole seconds, so that Validate accepts a body built by hand.
func (o *Order) Normalize() {
	norm := func(ids []string) []string {
		if len(ids) == 0 {
			return nil
		}
		ids = slices.Clone(ids)
		slices.Sort(ids)
		return slices.Compact(ids)
	}
	o.Scope.Transactions, o.Scope.Jobs = norm(o.Scope.Transactions), norm(o.Scope.Jobs)
	sec := func(t time.Time) time.Time { return t.UTC().Truncate(time.Second) }
	o.NotBefore, o.NotAfter = sec(o.NotBefore), sec(o.NotAfter)
	if o.Scope.CreatedFrom != nil {
		t := sec(*o.Scope.CreatedFrom)
		o.Scope.CreatedFrom = &t
	}
	if o.Scope.CreatedUntil != nil {
		t := sec(*o.Scope.CreatedUntil)
		o.Scope.CreatedUntil = &t
	}
}

// Canonical is the order's canonical encoding: JSON with the fields in the
// fixed order of the Order and Scope types, no insignificant white space,
// no HTML escaping, times as RFC 3339 UTC seconds, absent optional fields
// omitted. Only a valid order has one; Canonical panics on marshalling
// errors, which a valid order cannot produce.
func (o *Order) Canonical() []byte {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(o); err != nil {
		panic("orders: encoding a valid order: " + err.Error())
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n"))
}

// SignedMessage is what a signer signs: a domain-separation prefix naming
// the format version, then Canonical. The canonical body holds the order's
// id (and, in version 2, the id it supersedes), so a signature binds the
// body to its id: a body moved under another id does not verify.
func (o *Order) SignedMessage() []byte {
	return append([]byte(signedPrefix(o.Version)), o.Canonical()...)
}

// BodySHA256 is the lowercase hex SHA-256 of Canonical: what `custodyctl
// order show` prints and what a signer confirms with `order sign
// --sha256`.
func (o *Order) BodySHA256() string {
	sum := sha256.Sum256(o.Canonical())
	return hex.EncodeToString(sum[:])
}

// bodyFields are the top-level fields of the canonical body, in canonical
// order (for DiffFields).
var bodyFields = []string{"version", "id", "supersedes", "auditor", "scope", "purpose", "document_sha256", "authority", "not_before", "not_after", "max_uses"}

// DiffFields names the top-level body fields in which two valid orders
// differ, in canonical order: what a signer is told when the body in Vault
// is not the one they reviewed.
func DiffFields(a, b *Order) []string {
	var ma, mb map[string]json.RawMessage
	if json.Unmarshal(a.Canonical(), &ma) != nil || json.Unmarshal(b.Canonical(), &mb) != nil {
		return nil // cannot happen for valid orders
	}
	var out []string
	for _, f := range bodyFields {
		if !bytes.Equal(ma[f], mb[f]) {
			out = append(out, f)
		}
	}
	return out
}

// ParseBody parses an order body that a signer reviewed, as a local file
// (`custodyctl order sign --body FILE`): strictly (unknown fields,
// duplicate keys and trailing data are errors, as for ParseOrder) and
// validated, but in any JSON spelling (indented, fields in any order), since
// only its canonical form is compared with Vault's. Errors match
// ErrMalformed.
func ParseBody(data []byte) (*Order, error) {
	if len(data) > MaxRecordBytes {
		return nil, fmt.Errorf("%w: body larger than %d bytes", ErrMalformed, MaxRecordBytes)
	}
	var o Order
	if err := strictDecode(data, &o); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	return &o, nil
}

// ParseOrder parses an order body strictly (unknown fields, trailing data
// and duplicate keys are errors), validates it and requires it to be in
// canonical form: ParseOrder(o.Canonical()) returns o, and any other
// spelling of the same order is refused. Errors match ErrMalformed.
func ParseOrder(data []byte) (*Order, error) {
	var o Order
	if err := strictDecode(data, &o); err != nil {
		return nil, err
	}
	if err := o.Validate(); err != nil {
		return nil, err
	}
	if !bytes.Equal(o.Canonical(), data) {
		return nil, fmt.Errorf("%w: not in canonical form", ErrMalformed)
	}
	return &o, nil
}

// ParseRecord parses a KV entry's data (as JSON) strictly and validates the
// order body and the shape of the signatures (not their validity: that
// needs the pinned keys, see Verifier). Errors match ErrMalformed.
func ParseRecord(data []byte) (*Record, error) {
	if len(data) > MaxRecordBytes {
		return nil, fmt.Errorf("%w: record larger than %d bytes", ErrMalformed, MaxRecordBytes)
	}
	var r Record
	if err := strictDecode(data, &r); err != nil {
		return nil, err
	}
	if err := r.Order.Validate(); err != nil {
		return nil, err
	}
	if len(r.Signatures) > MaxSignatures {
		return nil, fmt.Errorf("%w: signatures: more than %d", ErrMalformed, MaxSignatures)
	}
	for i, s := range r.Signatures {
		if !nameRe.MatchString(s.Signer) {
			return nil, fmt.Errorf("%w: signatures[%d].signer: %q is not a signer name", ErrMalformed, i, s.Signer)
		}
		if b, err := base64.StdEncoding.Strict().DecodeString(s.Signature); err != nil || len(b) != ed25519.SignatureSize {
			return nil, fmt.Errorf("%w: signatures[%d].signature: want base64 of %d bytes", ErrMalformed, i, ed25519.SignatureSize)
		}
	}
	return &r, nil
}

// strictDecode decodes one JSON value into v, refusing unknown fields,
// duplicate object keys and trailing data.
func strictDecode(data []byte, v any) error {
	if err := noDuplicateKeys(data); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if dec.More() {
		return fmt.Errorf("%w: trailing data", ErrMalformed)
	}
	return nil
}

// noDuplicateKeys walks data and fails on an object with a repeated key
// (encoding/json would keep the last one silently).
func noDuplicateKeys(data []byte) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	var walk func(depth int) error
	walk = func(depth int) error {
		if depth > 16 {
			return fmt.Errorf("nested deeper than 16")
		}
		tok, err := dec.Token()
		if err != nil {
			return err
		}
		d, ok := tok.(json.Delim)
		if !ok {
			return nil
		}
		switch d {
		case '{':
			seen := map[string]bool{}
			for dec.More() {
				k, err := dec.Token()
				if err != nil {
					return err
				}
				key, _ := k.(string)
				if seen[key] {
					return fmt.Errorf("duplicate key %q", key)
				}
				seen[key] = true
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		case '[':
			for dec.More() {
				if err := walk(depth + 1); err != nil {
					return err
				}
			}
		}
		_, err = dec.Token() // the closing delimiter
		return err
	}
	return walk(0)
}

// Sign returns key's signature of o, for Record.Signatures. It signs
// whatever o holds: Intake.Sign is the checked way, which signs only the
// body the signer reviewed.
func Sign(o *Order, signer string, key ed25519.PrivateKey) Signature {
	sig := ed25519.Sign(key, o.SignedMessage())
	return Signature{Signer: signer, Signature: base64.StdEncoding.EncodeToString(sig)}
}

// Verifier checks a record's signatures against pinned keys.
type Verifier struct {
	keys   map[string]ed25519.PublicKey
	quorum int
}

// NewVerifier pins signers (name → key) and a quorum. Config.Validate has
// checked both.
func NewVerifier(signers []Signer, quorum int) (*Verifier, error) {
	v := &Verifier{keys: map[string]ed25519.PublicKey{}, quorum: quorum}
	for _, s := range signers {
		k, err := s.Key()
		if err != nil {
			return nil, err
		}
		v.keys[s.Name] = k
	}
	return v, nil
}

// Verify checks every signature of r: a signer not pinned is
// ErrUnknownSigner, a signer twice is ErrDuplicateSigner, a signature that
// does not verify is ErrSignature (each refuses the whole record, even if
// the others would reach the quorum), and fewer than the quorum is
// ErrQuorum. It returns the names of the signers, in record order.
func (v *Verifier) Verify(r *Record) ([]string, error) {
	msg := r.Order.SignedMessage()
	seen := map[string]bool{}
	var names []string
	for i, s := range r.Signatures {
		k, ok := v.keys[s.Signer]
		if !ok {
			return nil, fmt.Errorf("%w: signatures[%d]: %q", ErrUnknownSigner, i, s.Signer)
		}
		if seen[s.Signer] {
			return nil, fmt.Errorf("%w: signatures[%d]: %q", ErrDuplicateSigner, i, s.Signer)
		}
		seen[s.Signer] = true
		sig, err := base64.StdEncoding.Strict().DecodeString(s.Signature)
		if err != nil || !ed25519.Verify(k, msg, sig) {
			return nil, fmt.Errorf("%w: signatures[%d] by %q", ErrSignature, i, s.Signer)
		}
		names = append(names, s.Signer)
	}
	if len(names) < v.quorum {
		return nil, fmt.Errorf("%w: %d valid, quorum is %d", ErrQuorum, len(names), v.quorum)
	}
	return names, nil
}

// DocumentHash returns the lowercase hex SHA-256 form used in
// Order.DocumentSHA256 for a digest.
func DocumentHash(sum [32]byte) string { return hex.EncodeToString(sum[:]) }
