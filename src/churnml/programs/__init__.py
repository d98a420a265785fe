"""Program evaluation: experiments (lift, CUPED, sample-ratio check, power), uplift targeting and warning-rule backtests."""
