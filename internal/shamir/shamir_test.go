package shamir

import (
	"bytes"
	"crypto/rand"
	"errors"
	"testing"
)

// FIPS-197 section 4.2: {57}•{83} = {c1}, {57}•{13} = {fe}.
func TestMulFIPS197(t *testing.T) {
	for _, c := range []struct{ a, b, want byte }{
		{0x57, 0x83, 0xc1}, {0x57, 0x13, 0xfe}, {0x57, 0x02, 0xae}, {0x57, 0x04, 0x47},
		{0x57, 0x08, 0x8e}, {0x57, 0x10, 0x07}, {0, 0xff, 0}, {1, 0xab, 0xab},
	} {
		if got := mul(c.a, c.b); got != c.want {
			t.Errorf("mul(%#x,%#x) = %#x, want %#x", c.a, c.b, got, c.want)
		}
	}
}

// Every non-zero element has its inverse; FIPS-197 5.1.1: {53}^-1 = {ca}.
func TestInv(t *testing.T) {
	if inv(0x53) != 0xca {
		t.Fatalf("inv(0x53) = %#x, want 0xca", inv(0x53))
	}
	for a := 1; a < 256; a++ {
		if mul(byte(a), inv(byte(a))) != 1 {
			t.Fatalf("a·inv(a) != 1 for a=%#x", a)
		}
	}
	// mul agrees with a slow reference for all pairs.
	for a := 0; a < 256; a++ {
		for b := 0; b < 256; b++ {
			if mul(byte(a), byte(b)) != slowMul(byte(a), byte(b)) {
				t.Fatalf("mul(%#x,%#x) disagrees with the reference", a, b)
			}
		}
	}
}

func slowMul(a, b byte) byte {
	var p uint16
	for i := 0; i < 8; i++ {
		if b&(1<<i) != 0 {
			p ^= uint16(a) << i
		}
	}
	for i := 15; i >= 8; i-- {
		if p&(1<<i) != 0 {
			p ^= 0x11b << (i - 8)
		}
	}
	return byte(p)
}

// subsets calls f with every k-subset of 0..n-1.
func subsets(n, k int, f func([]int)) {
	var rec func(start int, cur []int)
	rec = func(start int, cur []int) {
		if len(cur) == k {
			f(cur)
			return
		}
		for i := start; i < n; i++ {
			rec(i+1, append(cur, i))
		}
	}
	rec(0, nil)
}

func TestAnyMReconstruct(t *testing.T) {
	secret := make([]byte, 32)
	rand.Read(secret)
	for _, mn := range [][2]int{{2, 2}, {2, 3}, {3, 5}, {5, 5}, {4, 7}} {
		m, n := mn[0], mn[1]
		shares, err := Split(secret, m, n)
		if err != nil {
			t.Fatal(err)
		}
		for k := m; k <= n; k++ {
			subsets(n, k, func(idx []int) {
				var sub [][]byte
				for _, i := range idx {
					sub = append(sub, shares[i])
				}
				got, err := Combine(sub)
				if err != nil || !bytes.Equal(got, secret) {
					t.Fatalf("M=%d N=%d subset %v: got %x, %v", m, n, idx, got, err)
				}
			})
		}
		// M-1 shares do not give the secret.
		subsets(n, m-1, func(idx []int) {
			if m-1 < 2 {
				return
			}
			var sub [][]byte
			for _, i := range idx {
				sub = append(sub, shares[i])
			}
			if got, _ := Combine(sub); bytes.Equal(got, secret) {
				t.Fatalf("M=%d N=%d: %d shares reconstructed the secret", m, n, m-1)
			}
		})
	}
}

// With M-1 shares fixed, every candidate secret byte is consistent with
// them: for each candidate s there is exactly one polynomial of degree < M
// through (0,s) and the M-1 points, so the shares rule nothing out. Checked
// exhaustively for M=3: each of the 256 candidates yields a distinct
// value of a third share at x=3, i.e. the map is a bijection.
func TestMMinusOneRevealNothing(t *testing.T) {
	shares, err := Split([]byte{0x42}, 3, 5)
	if err != nil {
		t.Fatal(err)
	}
	seen := map[byte]bool{}
	for s := 0; s < 256; s++ {
		// Interpolate through (0,s), share 1, share 2 and evaluate at x=3:
		// combining {(x1,y1),(x2,y2),(3,y)} at 0 must give s for exactly one y.
		found := 0
		for y := 0; y < 256; y++ {
			got, err := Combine([][]byte{shares[0], shares[1], {3, byte(y)}})
			if err != nil {
				t.Fatal(err)
			}
			if got[0] == byte(s) {
				found++
				seen[byte(y)] = true
			}
		}
		if found != 1 {
			t.Fatalf("candidate %#x consistent with %d third shares, want exactly 1", s, found)
		}
	}
	if len(seen) != 256 {
		t.Fatalf("third-share values cover %d of 256", len(seen))
	}
}

func TestErrors(t *testing.T) {
	for _, c := range []struct{ m, n, l int }{{1, 3, 32}, {4, 3, 32}, {2, 256, 32}, {2, 3, 0}} {
		if _, err := Split(make([]byte, c.l), c.m, c.n); !errors.Is(err, ErrParams) {
			t.Errorf("Split M=%d N=%d len=%d: %v, want ErrParams", c.m, c.n, c.l, err)
		}
	}
	shares, _ := Split([]byte("secret"), 2, 3)
	for name, sub := range map[string][][]byte{
		"one":       {shares[0]},
		"duplicate": {shares[0], shares[0]},
		"length":    {shares[0], shares[1][:3]},
		"zero x":    {shares[0], append([]byte{0}, shares[1][1:]...)},
	} {
		if _, err := Combine(sub); !errors.Is(err, ErrShares) {
			t.Errorf("%s: %v, want ErrShares", name, err)
		}
	}
}

func FuzzCombine(f *testing.F) {
	s, _ := Split([]byte("seed"), 2, 3)
	f.Add(s[0], s[1])
	f.Fuzz(func(t *testing.T, a, b []byte) {
		_, _ = Combine([][]byte{a, b})
	})
}
