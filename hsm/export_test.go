package hsm

import "context"

// HoldAllSessions borrows every session of t's pool, waiting for operations
// in flight to finish, so that a test can pull the sessions away while no
// call is inside the module (SoftHSM 2.6.1 crashes when C_CloseAllSessions
// races a C_Decrypt on another thread). release gives them back unchanged.
func HoldAllSessions(ctx context.Context, t *Token) (release func(), err error) {
	var held []session
	release = func() {
		for _, s := range held {
			t.pool.release(s, true)
		}
	}
	for range t.pool.n {
		s, err := t.pool.borrow(ctx)
		if err != nil {
			release()
			return nil, err
		}
		held = append(held, s)
	}
	return release, nil
}
