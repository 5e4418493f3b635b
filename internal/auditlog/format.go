package auditlog

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"unicode/utf8"
)

// FormatVersion is the version of the entry encoding (docs/auditlog.md).
// It is the "v" member of every entry.
const FormatVersion = 1

// MaxEntryBytes bounds one encoded entry. Record refuses larger entries
// with ErrInvalidEntry; the parser rejects them.
const MaxEntryBytes = 256 << 10

// ErrMalformed: bytes that are not a valid, canonical entry of this format
// version. Errors from ParseEntry wrap it.
var ErrMalformed = errors.New("auditlog: malformed entry")

// leafV1 is the encoded form of an entry: the version, the entry's index in
// the log, then Entry's members, in the order encoding/json writes them.
type leafV1 struct {
	V     int   `json:"v"`
	Index int64 `json:"i"`
	Entry
}

// EncodeEntry returns the canonical encoding of e as the entry at index: one
// line of JSON without its newline. These bytes are the Merkle tree leaf.
// e.Time is written in UTC.
func EncodeEntry(index int64, e Entry) ([]byte, error) {
	if err := checkEntry(e); err != nil {
		return nil, err
	}
	e.Time = e.Time.UTC()
	b, err := json.Marshal(leafV1{V: FormatVersion, Index: index, Entry: e})
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrInvalidEntry, err)
	}
	if len(b) > MaxEntryBytes {
		return nil, fmt.Errorf("%w: %d bytes encoded, at most %d", ErrInvalidEntry, len(b), MaxEntryBytes)
	}
	return b, nil
}

func checkEntry(e Entry) error {
	switch {
	case e.Time.IsZero():
		return fmt.Errorf("%w: no time", ErrInvalidEntry)
	case e.Time.Year() < 1 || e.Time.Year() > 9999:
		return fmt.Errorf("%w: time out of range", ErrInvalidEntry)
	case e.Operation == "":
		return fmt.Errorf("%w: no operation", ErrInvalidEntry)
	}
	switch e.Outcome {
	case Allowed, Denied, Failed:
	default:
		return fmt.Errorf("%w: outcome %q", ErrInvalidEntry, e.Outcome)
	}
	// clipped: clippable member names, each once, in member order.
	next := 0
	for _, name := range e.Clipped {
		i := slices.Index(clippable[next:], name)
		if i < 0 {
			return fmt.Errorf("%w: clipped %q is not a clippable member, or out of order", ErrInvalidEntry, name)
		}
		next += i + 1
	}
	return nil
}

// ParseEntry parses one encoded entry strictly: the format version must be
// FormatVersion, no member may be unknown, missing where required, or out
// of place, and the bytes must be exactly the canonical encoding
// EncodeEntry would produce (so one entry has one leaf hash). If index >= 0
// the entry must carry that index. Errors wrap ErrMalformed.
//
// Canonical entries are recognised by a hand-written decoder of the fixed
// schema (parseCanonical); anything it does not accept, it hands to
// parseEntryJSON, the encoding/json decoder and re-encoder that defines the
// format and produces every error.
func ParseEntry(b []byte, index int64) (int64, Entry, error) {
	if i, e, ok := parseCanonical(b, true); ok && (index < 0 || i == index) {
		return i, e, nil
	}
	return parseEntryJSON(b, index)
}

// parseEntryJSON is ParseEntry by encoding/json: decode strictly, then
// re-encode and compare. It is the reference parseCanonical is fuzzed
// against (FuzzParseCanonical).
func parseEntryJSON(b []byte, index int64) (int64, Entry, error) {
	if len(b) > MaxEntryBytes {
		return 0, Entry{}, fmt.Errorf("%w: %d bytes", ErrMalformed, len(b))
	}
	var probe struct {
		V *int `json:"v"`
	}
	if err := json.Unmarshal(b, &probe); err != nil {
		return 0, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if probe.V == nil || *probe.V != FormatVersion {
		return 0, Entry{}, fmt.Errorf("%w: format version is not %d", ErrMalformed, FormatVersion)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	var l leafV1
	if err := dec.Decode(&l); err != nil {
		return 0, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if index >= 0 && l.Index != index {
		return l.Index, Entry{}, fmt.Errorf("%w: entry claims index %d, found at index %d", ErrMalformed, l.Index, index)
	}
	if l.Index < 0 {
		return l.Index, Entry{}, fmt.Errorf("%w: negative index", ErrMalformed)
	}
	if err := checkEntry(l.Entry); err != nil {
		return l.Index, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	canon, err := EncodeEntry(l.Index, l.Entry)
	if err != nil {
		return l.Index, Entry{}, fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if !bytes.Equal(canon, b) {
		return l.Index, Entry{}, fmt.Errorf("%w: not in canonical form", ErrMalformed)
	}
	return l.Index, l.Entry, nil
}

// Limits on the strings of an entry (Normalize). Together they bound the
// encoding of any normalized entry well below MaxEntryBytes, whatever the
// strings hold (TestNormalizeBound: every member at its limit, every byte
// one that JSON writes as a six-byte \u escape), so an entry built from
// a caller's request is always recorded.
const (
	MaxStringBytes = 256     // every string member but exe and detail, and every list item
	MaxExeBytes    = 1024    // caller.exe (a path)
	MaxDetailBytes = 8 << 10 // detail
	MaxListItems   = 256     // participants, fields: items kept, the clip note included
	MaxListBytes   = 8 << 10 // participants, fields: bytes of the items kept, the clip note included
)

// ClipMarker starts the suffix of a clipped string: "…[N bytes, clipped]"
// with N the original length in bytes.
const ClipMarker = "…["

// Normalize returns e as it is recorded: invalid UTF-8 replaced with
// U+FFFD in every string (as the JSON encoding would, so that what is
// written parses back to itself), and every string and list cut to its
// limit above. A cut string keeps its first bytes (whole runes) and ends
// with "…[N bytes, clipped]"; a cut list keeps its first items and ends
// with "…[N more items, clipped]"; every cut member is named in
// e.Clipped, never silently. Normalize is idempotent (a name already in
// e.Clipped stays) and the only writer of Clipped: names in it that are
// not clippable members are dropped. Log.Append normalizes every entry; the daemon's record path
// does too, so every Recorder sees the same entry.
func Normalize(e Entry) Entry {
	var cut uint32 // bit i: clippable[i] was cut (now or before)
	for _, name := range e.Clipped {
		if i := slices.Index(clippable, name); i >= 0 {
			cut |= 1 << i
		}
	}
	was := cut
	members := stringMembers(&e)
	for _, m := range members {
		v, c := clipString(*m.s, m.max)
		*m.s = v
		if c {
			cut |= 1 << m.clip
		}
	}
	for _, l := range [...]struct {
		clip int
		list *[]string
	}{{clipParticipants, &e.Participants}, {clipFields, &e.Fields}} {
		v, c := clipList(*l.list)
		*l.list = v
		if c {
			cut |= 1 << l.clip
		}
	}
	if cut == was && isCanonicalClipped(e.Clipped, cut) {
		return e // nothing newly cut, Clipped already in order: keep it (no allocation)
	}
	e.Clipped = nil
	for i, name := range clippable {
		if cut&(1<<i) != 0 {
			e.Clipped = append(e.Clipped, name)
		}
	}
	return e
}

// isCanonicalClipped reports whether names is exactly the clippable
// members of mask, each once, in clippable's order (nil for no bits).
func isCanonicalClipped(names []string, mask uint32) bool {
	i := 0
	for bit, name := range clippable {
		if mask&(1<<bit) == 0 {
			continue
		}
		if i >= len(names) || names[i] != name {
			return false
		}
		i++
	}
	return i == len(names)
}

// clippable lists the members Normalize may clip, in member order: the
// only names Clipped may hold, in this order. At most 32 (Normalize's
// bit set); the clip* constants are indices into it.
var clippable = []string{"op", "caller.exe", "principal", "transaction_id", "job_id", "participant", "participants",
	"sealed_by", "key", "purpose", "fields", "end_user.ip", "end_user.user_agent", "end_user.request_id",
	"court_order", "document_hash", "code", "detail"}

const (
	clipOp = iota
	clipExe
	clipPrincipal
	clipTransaction
	clipJob
	clipParticipant
	clipParticipants
	clipSealedBy
	clipKey
	clipPurpose
	clipFields
	clipIP
	clipUserAgent
	clipRequestID
	clipCourtOrder
	clipDocumentHash
	clipCode
	clipDetail
)

// stringMember is one string member of an entry: its index in clippable,
// where it is and its limit in bytes.
type stringMember struct {
	clip int
	s    *string
	max  int
}

func stringMembers(e *Entry) [16]stringMember {
	return [...]stringMember{{clipOp, &e.Operation, MaxStringBytes}, {clipExe, &e.Caller.Executable, MaxExeBytes},
		{clipPrincipal, &e.Principal, MaxStringBytes}, {clipTransaction, &e.TransactionID, MaxStringBytes},
		{clipJob, &e.JobID, MaxStringBytes}, {clipParticipant, &e.Participant, MaxStringBytes},
		{clipSealedBy, &e.SealedBy, MaxStringBytes}, {clipKey, &e.KeyLabel, MaxStringBytes}, {clipPurpose, &e.Purpose, MaxStringBytes},
		{clipIP, &e.EndUser.IP, MaxStringBytes}, {clipUserAgent, &e.EndUser.UserAgent, MaxStringBytes},
		{clipRequestID, &e.EndUser.RequestID, MaxStringBytes}, {clipCourtOrder, &e.CourtOrder, MaxStringBytes},
		{clipDocumentHash, &e.DocumentHash, MaxStringBytes}, {clipCode, &e.Code, MaxStringBytes},
		{clipDetail, &e.Detail, MaxDetailBytes}}
}

// clipString makes s valid UTF-8 and at most max bytes long; cut reports
// whether it had to be shortened (invalid UTF-8 alone is not a cut).
func clipString(s string, max int) (string, bool) {
	if !utf8.ValidString(s) {
		s = strings.ToValidUTF8(s, "\uFFFD")
	}
	if len(s) <= max {
		return s, false
	}
	return cutTo(s, max, fmt.Sprintf("%s%d bytes, clipped]", ClipMarker, len(s))), true
}

// ClipString is clipString for callers that build strings that go into an
// entry's detail: s made valid UTF-8 and cut to max bytes, marked when cut.
func ClipString(s string, max int) string {
	v, _ := clipString(s, max)
	return v
}

// cutTo keeps the longest prefix of s (whole runes) that leaves room for
// suffix within max bytes, and appends suffix.
func cutTo(s string, max int, suffix string) string {
	keep := max - len(suffix)
	if keep < 0 {
		keep = 0
	}
	for keep > 0 && !utf8.RuneStart(s[keep]) {
		keep--
	}
	return s[:keep] + suffix
}

// clipList clips every item of list to MaxStringBytes and keeps at most
// MaxListItems items and MaxListBytes bytes of them, the note of how many
// were cut included. It copies list before changing it.
func clipList(list []string) ([]string, bool) {
	var out []string // nil until a change
	cut, total := false, 0
	for i, s := range list {
		v, c := clipString(s, MaxStringBytes)
		if v != s && out == nil {
			out = slices.Clone(list[:i:i])
		}
		if out != nil {
			out = append(out, v)
		}
		cut = cut || c
		total += len(v)
	}
	if out == nil {
		out = list
	}
	if len(out) <= MaxListItems && total <= MaxListBytes {
		return out, cut
	}
	// Too many or too long: keep the longest prefix that fits with the note.
	n, size := 0, 0
	for n < len(out) {
		note := fmt.Sprintf("%s%d more items, clipped]", ClipMarker, len(out)-n-1)
		if n+2 > MaxListItems || size+len(out[n])+len(note) > MaxListBytes {
			break
		}
		size += len(out[n])
		n++
	}
	kept := slices.Clone(out[:n:n])
	return append(kept, fmt.Sprintf("%s%d more items, clipped]", ClipMarker, len(out)-n)), true
}
