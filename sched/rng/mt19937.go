// Package rng reproduces PyTorch's CPU random streams, so that a seed gives
// the same initial latents and ancestral noise as torch.randn on a
// torch.Generator('cpu') does in the reference pipelines.
package rng

// mt19937 is the 32-bit Mersenne Twister exactly as ATen's at::mt19937
// (ATen/core/MT19937RNGEngine.h) seeds and steps it; the output stream is
// the standard std::mt19937 one.
type mt19937 struct {
	state [mtN]uint32
	next  int
	left  int
}

const (
	mtN       = 624
	mtM       = 397
	mtMatrixA = 0x9908b0df
	mtUpper   = 0x80000000
	mtLower   = 0x7fffffff
)

// seed initialises the state the way torch does: only the low 32 bits of
// the 64-bit seed take part (torch.manual_seed(2**40+7) equals seed 7).
func (m *mt19937) seed(s uint64) {
	m.state[0] = uint32(s)
	for j := 1; j < mtN; j++ {
		p := m.state[j-1]
		m.state[j] = 1812433253*(p^(p>>30)) + uint32(j)
	}
	// ATen regenerates lazily on the first draw.
	m.left = 1
	m.next = 0
}

func (m *mt19937) twist() {
	m.left = mtN
	m.next = 0
	for i := 0; i < mtN; i++ {
		y := m.state[i]&mtUpper | m.state[(i+1)%mtN]&mtLower
		v := m.state[(i+mtM)%mtN] ^ y>>1
		if y&1 != 0 {
			v ^= mtMatrixA
		}
		m.state[i] = v
	}
}

// uint32 returns the next tempered output.
func (m *mt19937) uint32() uint32 {
	m.left--
	if m.left == 0 {
		m.twist()
	}
	y := m.state[m.next]
	m.next++
	y ^= y >> 11
	y ^= (y << 7) & 0x9d2c5680
	y ^= (y << 15) & 0xefc60000
	y ^= y >> 18
	return y
}
