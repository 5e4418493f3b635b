package main

import (
	"fmt"
	"os"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// userHZ is the unit of utime and stime in /proc/PID/stat (the kernel's
// USER_HZ, 100 on every Linux architecture Go runs on).
const userHZ = 100

// processCPU returns the user + system CPU time the process pid (all its
// threads) has used so far, from /proc/PID/stat; pid 0 is this process
// (getrusage, finer than the ticks of /proc).
func processCPU(pid int) (time.Duration, error) {
	if pid == 0 {
		var ru syscall.Rusage
		if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
			return 0, err
		}
		return time.Duration(ru.Utime.Nano() + ru.Stime.Nano()), nil
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// The command name (field 2) is in parentheses and may hold spaces:
	// fields 14 and 15 (utime, stime) count from after its ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command name", pid)
	}
	f := strings.Fields(s[i+1:]) // f[0] is field 3 (state)
	if len(f) < 13 {
		return 0, fmt.Errorf("/proc/%d/stat: %d fields", pid, len(f)+2)
	}
	var ticks int64
	for _, v := range f[11:13] {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return 0, fmt.Errorf("/proc/%d/stat: %w", pid, err)
		}
		ticks += n
	}
	return time.Duration(ticks) * time.Second / userHZ, nil
}

// cpuMeter measures the CPU that a server process and this load generator
// use over one round. A zero pid measures the load generator only.
type cpuMeter struct {
	pid               int
	server, bench     time.Duration
	serverOK, benchOK bool
}

func startCPU(pid int) *cpuMeter {
	m := &cpuMeter{pid: pid}
	var err error
	if pid > 0 {
		m.server, err = processCPU(pid)
		m.serverOK = err == nil
	}
	m.bench, err = processCPU(0)
	m.benchOK = err == nil
	return m
}

// stop returns the CPU used since startCPU by the server (-1 when unknown)
// and by this process.
func (m *cpuMeter) stop() (server, bench time.Duration) {
	server, bench = -1, -1
	if m.serverOK {
		if s, err := processCPU(m.pid); err == nil {
			server = s - m.server
		}
	}
	if m.benchOK {
		if b, err := processCPU(0); err == nil {
			bench = b - m.bench
		}
	}
	return server, bench
}
