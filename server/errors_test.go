package server_test

import (
	"fmt"

	"github.com/zimage/zimage/engine/vk"
	"github.com/zimage/zimage/model"
)

type nonFinite = model.NonFiniteOutputError

func errDeviceLost() error { return fmt.Errorf("sched: step 1: %w", vk.ErrDeviceLost) }
