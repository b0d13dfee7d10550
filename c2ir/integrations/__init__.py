"""c2ir detectors from the libraries people already use: `pytorch_ood` (a pytorch-ood `Detector`) and
`openood` (an OpenOOD v1.5 postprocessor). Each module imports its library only when it is used."""
