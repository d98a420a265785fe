"""Program evaluation: experiments (lift, CUPED, sample-ratio check, pilot sizes), uplift, backtest."""
