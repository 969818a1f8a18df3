"""Talk while you code: WebRTC signaling (y-webrtc topics, room calls), ICE configuration, and the
server's own media peers (the audio relay for large sessions, call recording). See docs/rtc.md."""
