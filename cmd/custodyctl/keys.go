package main

// custodyctl keys list|rotate|retire|prove and custodyctl rewrap.

import (
	"bufio"
	"bytes"
	"crypto/rand"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"

	"custody/internal/api"
	"custody/internal/device"
	"custody/internal/durable"
	"custody/internal/pop"
)

func day(t time.Time) string {
	if t.IsZero() {
		return "-"
	}
	return t.UTC().Format(time.DateOnly)
}

func printKey(w io.Writer, k *api.Key) {
	name := k.ID
	if k.Kind == "escrow" {
		name = "(escrow)"
	}
	flags := []string{}
	if k.Due {
		flags = append(flags, "ROTATION DUE")
	}
	if k.NeedsRewrap {
		flags = append(flags, "older versions on the token: rewrap, then retire")
	}
	fmt.Fprintf(w, "%-24s active v%d, due %s  %s\n", name, k.Active, day(k.DueAt), strings.Join(flags, "; "))
	for _, v := range k.Versions {
		switch v.State {
		case "destroyed":
			fmt.Fprintf(w, "    v%-4d %-12s destroyed %s\n", v.Version, v.State, day(v.Destroyed))
		default:
			fmt.Fprintf(w, "    v%-4d %-12s %-7s created %s (%d days)  rotate after %s  sha256 %.16s…\n",
				v.Version, v.State, v.Algorithm, day(v.Created), v.AgeDays, day(v.RotateAfter), v.SHA256)
		}
	}
}

func (c *cli) keysList() error {
	ctx, cancel := c.ctx()
	defer cancel()
	r, err := c.d.Keys(ctx)
	if err != nil {
		return err
	}
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "rotation period %s\n", r.RotateAfter)
		for i := range r.Keys {
			printKey(w, &r.Keys[i])
		}
	})
}

func (c *cli) keysRotate(id string) error {
	ctx, cancel := c.ctx()
	defer cancel()
	k, err := c.d.Rotate(ctx, id)
	if err != nil {
		return err
	}
	return c.answer(k, func(w io.Writer) {
		fmt.Fprintf(w, "rotated %s: v%d is active; run custodyctl rewrap on its envelopes, then retire the older versions\n", id, k.Active)
		printKey(w, k)
	})
}

func (c *cli) keysRetire(pos []string, confirm *bool, count *int64, storeDSN string) error {
	v, err := strconv.ParseUint(strings.TrimPrefix(pos[1], "v"), 10, 32)
	if err != nil || v == 0 {
		return usageError{msg: "VERSION must be a version number such as 1 or v1"}
	}
	ctx, cancel := c.ctx()
	defer cancel()
	switch {
	case storeDSN != "" && *count >= 0:
		return usageError{msg: "give --store or --count, not both"}
	case storeDSN != "":
		n, err := c.retireChecked(ctx, storeDSN, pos[0], uint32(v))
		if err != nil {
			return err
		}
		*confirm, *count = true, n
	case !*confirm || *count < 0:
		return usageError{msg: "retiring destroys the key version on the HSM for good: add --confirm-rewrapped and --count N (N: the envelope count your last `custodyctl rewrap` printed), or --store DSN"}
	}
	k, err := c.d.Retire(ctx, pos[0], api.RetireRequest{Version: uint32(v), ConfirmRewrapped: true, RewrappedCount: count})
	if err != nil {
		return err
	}
	return c.answer(k, func(w io.Writer) {
		fmt.Fprintf(w, "retired %s v%d: destroyed on the token\n", pos[0], v)
		printKey(w, k)
	})
}

// errProof is returned when a proof of possession does not verify.
var errProof = errors.New("proof_failed: the MAC does not verify against the published public key: the HSM does not hold that private key")

func (c *cli) keysProve(pos []string, version *uint, public *string) error {
	id := pos[0]
	ctx, cancel := c.ctx()
	defer cancel()
	p, err := c.d.Participant(ctx, id)
	if err != nil {
		return err
	}
	want := uint32(*version)
	if want == 0 {
		want = p.Active
	}
	alg, pubB64 := device.KeyAlg(0), ""
	for _, v := range p.Versions {
		if v.Version == want {
			pubB64 = v.PublicKey
			switch v.Algorithm {
			case device.X25519.String():
				alg = device.X25519
			case device.P256.String():
				alg = device.P256
			}
		}
	}
	if *public != "" {
		pubB64 = *public
	}
	published, err := base64.StdEncoding.DecodeString(pubB64)
	if err != nil || alg == 0 || len(published) == 0 {
		return fmt.Errorf("no usable published public key for %s v%d", id, want)
	}
	eph, err := pop.Curve(alg).GenerateKey(rand.Reader)
	if err != nil {
		return err
	}
	nonce := make([]byte, 32)
	rand.Read(nonce)
	r, err := c.d.Prove(ctx, id, api.ProveRequest{Version: want,
		EphemeralPublic: base64.StdEncoding.EncodeToString(eph.PublicKey().Bytes()),
		Nonce:           base64.StdEncoding.EncodeToString(nonce)})
	if err != nil {
		return err
	}
	mac, err := base64.StdEncoding.DecodeString(r.MAC)
	if err != nil {
		return fmt.Errorf("unexpected response: mac: %w", err)
	}
	if err := pop.Verify(alg, eph, published, nonce, mac); err != nil {
		if errors.Is(err, pop.ErrMismatch) {
			return errProof
		}
		return err
	}
	return c.answer(r, func(w io.Writer) {
		fmt.Fprintf(w, "proved: the HSM holds the private key of %s v%d (%s, public key %s)\n", id, r.Version, alg, pubB64)
	})
}

// --- rewrap ---

// rewrapState is the resume state of one rewrap run, in its sidecar file.
type rewrapState struct {
	V         int    `json:"v"`         // 1
	In        string `json:"in"`        // absolute input path
	InSize    int64  `json:"in_size"`   // size of the input when the run started
	Done      int64  `json:"done"`      // input lines finished
	OutBytes  int64  `json:"out_bytes"` // bytes of OUT that belong to finished lines
	Changed   int64  `json:"changed"`   // envelopes rewrapped
	Unchanged int64  `json:"unchanged"` // envelopes already current
	Failed    int64  `json:"failed"`    // lines answered with an error
}

// parseState parses a state file strictly (version 1, no unknown members,
// no negative counters, counters consistent).
func parseState(b []byte) (rewrapState, error) {
	var st rewrapState
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return rewrapState{}, fmt.Errorf("rewrap state: %w", err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return rewrapState{}, errors.New("rewrap state: trailing data")
	}
	switch {
	case st.V != 1:
		return rewrapState{}, fmt.Errorf("rewrap state: version %d, want 1", st.V)
	case st.In == "" || st.InSize < 0 || st.Done < 0 || st.OutBytes < 0 || st.Changed < 0 || st.Unchanged < 0 || st.Failed < 0:
		return rewrapState{}, errors.New("rewrap state: missing input or negative counter")
	case st.Changed+st.Unchanged+st.Failed > st.Done:
		return rewrapState{}, errors.New("rewrap state: more results than finished lines")
	}
	return st, nil
}

// writeState replaces path atomically (mode 0600): temp file, fsync,
// rename, fsync dir.
func writeState(path string, st rewrapState) error {
	b, _ := json.Marshal(st)
	return durable.Replace(path, append(b, '\n'), 0o600)
}

func isTerminal(f *os.File) bool {
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// progress draws a progress bar with rate and ETA on a terminal.
type progress struct {
	w           io.Writer
	on          bool
	total, base int64
	start, last time.Time
}

func (p *progress) update(done int64, final bool) {
	if !p.on || (!final && time.Since(p.last) < 200*time.Millisecond) {
		return
	}
	p.last = time.Now()
	el := time.Since(p.start).Seconds()
	rate := float64(done-p.base) / max(el, 1e-3)
	frac := 1.0
	if p.total > 0 {
		frac = float64(done) / float64(p.total)
	}
	const width = 30
	bar := strings.Repeat("#", int(frac*width)) + strings.Repeat(".", width-int(frac*width))
	eta := "-"
	if rate > 0 && p.total >= done {
		eta = (time.Duration(float64(p.total-done)/rate) * time.Second).Truncate(time.Second).String()
	}
	fmt.Fprintf(p.w, "\r[%s] %d/%d %3.0f%% %6.0f/s ETA %s   ", bar, done, p.total, 100*frac, rate, eta)
	if final {
		fmt.Fprintln(p.w)
	}
}

func (c *cli) rewrap(in, out, statePath *string, chunk *int, stderr io.Writer) error {
	if *in == "" || *out == "" || *chunk < 1 {
		return usageError{msg: "rewrap: --in and --out (or --postgres) are required, and --chunk must be at least 1", hint: "see custodyctl rewrap --help"}
	}
	if *statePath == "" {
		*statePath = *out + ".state"
	}
	inAbs, err := filepath.Abs(*in)
	if err != nil {
		return err
	}
	inf, err := os.Open(inAbs)
	if err != nil {
		return err
	}
	defer inf.Close()
	fi, err := inf.Stat()
	if err != nil {
		return err
	}
	st := rewrapState{V: 1, In: inAbs, InSize: fi.Size()}
	if b, err := os.ReadFile(*statePath); err == nil {
		if st, err = parseState(b); err != nil {
			return fmt.Errorf("%s: %w (remove it to start over)", *statePath, err)
		}
		if st.In != inAbs || st.InSize != fi.Size() {
			return fmt.Errorf("%s belongs to another input (%s, %d bytes); remove it to start over", *statePath, st.In, st.InSize)
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return err
	}
	outf, err := os.OpenFile(*out, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return err
	}
	defer outf.Close()
	// Lines written after the last saved state are redone: drop them.
	if err := outf.Truncate(st.OutBytes); err != nil {
		return err
	}
	if _, err := outf.Seek(st.OutBytes, io.SeekStart); err != nil {
		return err
	}
	total, err := countLines(inf)
	if err != nil {
		return err
	}
	if _, err := inf.Seek(0, io.SeekStart); err != nil {
		return err
	}
	rd := bufio.NewReaderSize(inf, 1<<20)
	for i := int64(0); i < st.Done; i++ {
		if _, err := rd.ReadSlice('\n'); err != nil && !errors.Is(err, bufio.ErrBufferFull) {
			if err == io.EOF {
				break
			}
			return err
		}
	}
	if st.Done > 0 {
		fmt.Fprintf(stderr, "resuming after line %d of %d\n", st.Done, total)
	}
	errf, _ := stderr.(*os.File)
	pb := &progress{w: stderr, on: errf != nil && isTerminal(errf), total: total, base: st.Done, start: time.Now()}
	w := bufio.NewWriterSize(outf, 1<<20)
	for {
		body, n, err := readChunk(rd, *chunk)
		if err != nil {
			return err
		}
		if n == 0 {
			break
		}
		if err := c.rewrapChunk(body, st.Done, w, &st); err != nil {
			return fmt.Errorf("lines %d..%d: %w (finished lines are saved; run again to resume)", st.Done+1, st.Done+int64(n), err)
		}
		if err := w.Flush(); err != nil {
			return err
		}
		if err := outf.Sync(); err != nil {
			return err
		}
		st.Done += int64(n)
		if st.OutBytes, err = outf.Seek(0, io.SeekCurrent); err != nil {
			return err
		}
		if err := writeState(*statePath, st); err != nil {
			return fmt.Errorf("saving progress: %w", err)
		}
		pb.update(st.Done, false)
	}
	pb.update(st.Done, true)
	ok := st.Changed + st.Unchanged
	fmt.Fprintf(c.out, "rewrap: %d envelopes: %d rewrapped, %d already current, %d failed\n", ok+st.Failed, st.Changed, st.Unchanged, st.Failed)
	if st.Failed > 0 {
		return fmt.Errorf("%d envelopes could not be rewrapped (see their error in %s); do not retire old versions they need", st.Failed, *out)
	}
	fmt.Fprintf(c.out, "all envelopes are on the active versions; to retire an old version: custodyctl keys retire ID VERSION --confirm-rewrapped --count %d\n", ok)
	return nil
}

func countLines(r io.Reader) (int64, error) {
	buf := make([]byte, 1<<20)
	var n int64
	var last byte = '\n'
	for {
		k, err := r.Read(buf)
		if k > 0 {
			n += int64(bytes.Count(buf[:k], []byte{'\n'}))
			last = buf[k-1]
		}
		if err == io.EOF {
			if last != '\n' {
				n++
			}
			return n, nil
		}
		if err != nil {
			return 0, err
		}
	}
}

// readChunk reads up to n lines (each ending in '\n', the last possibly
// not) and returns them and how many it read.
func readChunk(rd *bufio.Reader, n int) ([]byte, int, error) {
	var body []byte
	k := 0
	for k < n {
		line, err := rd.ReadBytes('\n')
		if len(line) > 0 {
			if line[len(line)-1] != '\n' {
				line = append(line, '\n')
			}
			body = append(body, line...)
			k++
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			return nil, 0, err
		}
	}
	return body, k, nil
}

// rewrapChunk sends one chunk to the streaming route and writes the
// answers, renumbered to input line numbers, to w.
func (c *cli) rewrapChunk(body []byte, offset int64, w io.Writer, st *rewrapState) error {
	ctx, cancel := c.ctx()
	defer cancel()
	want := int64(bytes.Count(body, []byte{'\n'})) // every line gets one answer (blank ones too, here)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	seen, answered := int64(0), int64(0)
	for l, err := range c.d.RewrapStream(ctx, body) {
		if err != nil {
			return err
		}
		if l.Line < 1 || l.Line > want || l.Line <= seen {
			if l.Error != nil {
				return l.Error // the request as a whole failed (e.g. body_too_large)
			}
			return fmt.Errorf("answer for line %d out of order", l.Line)
		}
		answered++
		seen = l.Line // blank input lines get no answer and no output line
		l.Line += offset
		switch {
		case l.Error != nil:
			st.Failed++
		case l.Changed != nil && *l.Changed:
			st.Changed++
		default:
			st.Unchanged++
		}
		if err := enc.Encode(l); err != nil {
			return err
		}
	}
	if nonBlank := countNonBlank(body); answered != nonBlank {
		return fmt.Errorf("the daemon answered %d of %d lines", answered, nonBlank)
	}
	return nil
}

func countNonBlank(body []byte) int64 {
	var n int64
	for _, l := range bytes.Split(body, []byte{'\n'}) {
		if len(bytes.TrimSpace(l)) > 0 {
			n++
		}
	}
	return n
}
