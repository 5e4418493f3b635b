package auditlog

import (
	"bytes"
	"encoding/json"
	"math"
)

// parseCanonical recognises the canonical encoding of an entry (format
// version 1, docs/auditlog.md) without encoding/json: the members in their
// fixed order, no white space, strings and numbers as encoding/json writes
// them. ok means b is exactly EncodeEntry(i, e) and ParseEntry(b, -1) would
// return (i, e, nil); !ok means nothing: ParseEntry then asks
// parseEntryJSON, which decides and explains. It never accepts what
// parseEntryJSON rejects (FuzzParseCanonical checks that, and that both
// return the same entry).
//
// With keep false every member is checked the same but the entry is not
// returned (no allocation): Verify and Open need the index and the verdict.
func parseCanonical(b []byte, keep bool) (int64, Entry, bool) {
	var e Entry
	if len(b) > MaxEntryBytes {
		return 0, e, false
	}
	p := canonParser{b: b, keep: keep}
	if keep {
		p.s = string(b) // one allocation; the entry's strings share it
	}
	if !p.lit(`{"v":1,"i":`) {
		return 0, e, false
	}
	u, ok := p.uint(math.MaxInt64)
	if !ok || !p.lit(`,"time":"`) {
		return 0, e, false
	}
	idx := int64(u)
	// The time: encoding/json hands the raw bytes between the quotes to
	// Time.UnmarshalJSON (no unescaping), which is Time.UnmarshalText.
	start := p.p
	for p.p < len(b) && simpleByte[b[p.p]] {
		p.p++
	}
	rawTime := b[start:p.p]
	if !p.lit(`","op":`) {
		return 0, e, false
	}
	if err := e.Time.UnmarshalText(rawTime); err != nil {
		return 0, e, false
	}
	op, nonEmpty, ok := p.strValue(keep)
	if !ok || !nonEmpty || !p.lit(`,"caller":{"uid":`) {
		return 0, e, false
	}
	e.Operation = op
	if !keep {
		e.Operation = "-" // not kept, but checked non-empty: checkEntry asks
	}
	if u, ok = p.uint(math.MaxUint32); !ok || !p.lit(`,"gid":`) {
		return 0, e, false
	}
	e.Caller.UID = uint32(u)
	if u, ok = p.uint(math.MaxUint32); !ok || !p.lit(`,"pid":`) {
		return 0, e, false
	}
	e.Caller.GID = uint32(u)
	pid, ok := p.int(math.MinInt32, math.MaxInt32)
	if !ok {
		return 0, e, false
	}
	e.Caller.PID = int32(pid)
	ok = p.optStr(`,"exe":`, &e.Caller.Executable) &&
		p.lit(`}`) &&
		p.optStr(`,"principal":`, &e.Principal) &&
		p.optStr(`,"transaction_id":`, &e.TransactionID) &&
		p.optStr(`,"job_id":`, &e.JobID) &&
		p.optStr(`,"participant":`, &e.Participant) &&
		p.optList(`,"participants":[`, &e.Participants) &&
		p.optStr(`,"sealed_by":`, &e.SealedBy) &&
		p.optStr(`,"key":`, &e.KeyLabel) &&
		p.optStr(`,"purpose":`, &e.Purpose) &&
		p.optList(`,"fields":[`, &e.Fields) &&
		p.endUser(&e.EndUser) &&
		p.optInt(`,"key_version":`, &e.KeyVersion) &&
		p.optStr(`,"court_order":`, &e.CourtOrder) &&
		p.optInt(`,"order_version":`, &e.OrderVersion) &&
		p.optStr(`,"document_hash":`, &e.DocumentHash) &&
		p.optInt(`,"use_number":`, &e.UseNumber) &&
		p.lit(`,"outcome":`)
	if !ok {
		return 0, e, false
	}
	// An outcome other than these three is rejected by checkEntry, and
	// these are their only canonical encodings.
	switch {
	case p.lit(`"allowed"`):
		e.Outcome = Allowed
	case p.lit(`"denied"`):
		e.Outcome = Denied
	case p.lit(`"failed"`):
		e.Outcome = Failed
	default:
		return 0, e, false
	}
	ok = p.optStr(`,"code":`, &e.Code) &&
		p.optStr(`,"detail":`, &e.Detail) &&
		p.clipped(&e.Clipped) &&
		p.lit(`}`) && p.p == len(b)
	if !ok {
		return 0, e, false
	}
	if checkEntry(e) != nil {
		return 0, e, false
	}
	// The time must be written as EncodeEntry writes it: in UTC, RFC 3339
	// with the shortest fraction (Time.MarshalJSON).
	var tb [64]byte
	canon, err := e.Time.UTC().AppendText(tb[:0])
	if err != nil || !bytes.Equal(canon, rawTime) {
		return 0, e, false
	}
	if !keep {
		e = Entry{}
	}
	return idx, e, true
}

// simpleByte[c]: encoding/json writes the one-byte string c as c itself
// (printable ASCII other than '"', '\\' and the HTML-escaped '<', '>',
// '&'). Computed from encoding/json itself.
var simpleByte = func() (t [256]bool) {
	for c := range 0x80 {
		b, err := json.Marshal(string(rune(c)))
		t[c] = err == nil && len(b) == 3 && b[1] == byte(c)
	}
	return t
}()

type canonParser struct {
	b    []byte
	s    string // string(b) when keep
	p    int
	keep bool
}

// lit consumes s.
func (p *canonParser) lit(s string) bool {
	if len(p.b)-p.p < len(s) || string(p.b[p.p:p.p+len(s)]) != s {
		return false
	}
	p.p += len(s)
	return true
}

// peek reports whether s is next, without consuming it.
func (p *canonParser) peek(s string) bool {
	return len(p.b)-p.p >= len(s) && string(p.b[p.p:p.p+len(s)]) == s
}

// digits reads a canonical unsigned decimal (0 or no leading zero) of at
// most 19 digits.
func (p *canonParser) digits() (uint64, bool) {
	start := p.p
	var v uint64
	for p.p < len(p.b) && p.b[p.p] >= '0' && p.b[p.p] <= '9' {
		if p.p-start == 19 {
			return 0, false
		}
		v = v*10 + uint64(p.b[p.p]-'0')
		p.p++
	}
	n := p.p - start
	if n == 0 || (n > 1 && p.b[start] == '0') {
		return 0, false
	}
	return v, true
}

func (p *canonParser) uint(max uint64) (uint64, bool) {
	v, ok := p.digits()
	return v, ok && v <= max
}

// int reads a canonical signed decimal in [lo, hi] ("-0" is not canonical).
func (p *canonParser) int(lo, hi int64) (int64, bool) {
	neg := p.p < len(p.b) && p.b[p.p] == '-'
	if neg {
		p.p++
	}
	v, ok := p.digits()
	if !ok {
		return 0, false
	}
	if neg {
		if v == 0 || v > uint64(-(lo+1))+1 {
			return 0, false
		}
		return -int64(v-1) - 1, true
	}
	if v > uint64(hi) {
		return 0, false
	}
	return int64(v), true
}

// strValue reads a JSON string in canonical form and reports whether it
// is non-empty; the value is returned only when want. A string of simple
// bytes is its own value; any other is decoded by encoding/json and must
// re-encode (json.Marshal) to the same bytes.
func (p *canonParser) strValue(want bool) (s string, nonEmpty, ok bool) {
	b := p.b
	if p.p >= len(b) || b[p.p] != '"' {
		return "", false, false
	}
	start := p.p + 1
	i := start
	for i < len(b) && simpleByte[b[i]] {
		i++
	}
	if i < len(b) && b[i] == '"' {
		p.p = i + 1
		if want {
			if p.s != "" {
				s = p.s[start:i]
			} else {
				s = string(b[start:i])
			}
		}
		return s, i > start, true
	}
	// Escapes, non-ASCII or control bytes: find the end of the literal
	// and let encoding/json decide.
	for i < len(b) && b[i] != '"' {
		if b[i] == '\\' {
			i++
		}
		i++
	}
	if i >= len(b) {
		return "", false, false
	}
	raw := b[start-1 : i+1]
	var v string
	if json.Unmarshal(raw, &v) != nil {
		return "", false, false
	}
	again, err := json.Marshal(v)
	if err != nil || !bytes.Equal(again, raw) {
		return "", false, false
	}
	p.p = i + 1
	return v, v != "", true
}

// optStr reads member name (",\"name\":") and a non-empty string, if
// name is next (an empty one would have been omitted).
func (p *canonParser) optStr(name string, dst *string) bool {
	if !p.lit(name) {
		return true
	}
	s, nonEmpty, ok := p.strValue(p.keep)
	if ok && nonEmpty {
		*dst = s
	}
	return ok && nonEmpty
}

// optInt reads member name and a non-zero int, if name is next.
func (p *canonParser) optInt(name string, dst *int) bool {
	if !p.lit(name) {
		return true
	}
	v, ok := p.int(math.MinInt, math.MaxInt)
	*dst = int(v)
	return ok && v != 0
}

// optList reads member name (ending in '[') and a non-empty list of
// strings, if name is next.
func (p *canonParser) optList(name string, dst *[]string) bool {
	if !p.lit(name) {
		return true
	}
	var list []string
	for {
		s, _, ok := p.strValue(p.keep)
		if !ok {
			return false
		}
		if p.keep {
			list = append(list, s)
		}
		if p.lit(`]`) {
			break
		}
		if !p.lit(`,`) {
			return false
		}
	}
	*dst = list
	return true
}

// clipped reads the clipped member, if next, keeping it even when p.keep
// is false: checkEntry checks its names.
func (p *canonParser) clipped(dst *[]string) bool {
	keep := p.keep
	p.keep = true
	ok := p.optList(`,"clipped":[`, dst)
	p.keep = keep
	return ok
}

// endUser reads the end_user member, if next: an object with at least
// one of its (non-empty) members.
func (p *canonParser) endUser(u *EndUser) bool {
	if !p.lit(`,"end_user":{`) {
		return true
	}
	var seen bool
	for _, m := range [...]struct {
		name string
		dst  *string
	}{{`"ip":`, &u.IP}, {`"user_agent":`, &u.UserAgent}, {`"request_id":`, &u.RequestID}} {
		sep := ""
		if seen {
			sep = ","
		}
		if !p.peek(sep + m.name) {
			continue
		}
		p.p += len(sep)
		if !p.optStr(m.name, m.dst) {
			return false
		}
		seen = true
	}
	return seen && p.lit(`}`)
}
